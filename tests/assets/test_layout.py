"""One data layout: ``prox_assets/layout.py`` builds every store key, its docstring and the README's
"Where things live" list the same keys, and no stage module spells one."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

from prox_assets import layout

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {
    "file": "news-00.jsonl",
    "shard": "news-00",
    "run_id": "r1",
    "level": "doc",
    "version": "v1",
    "refiner_version": "d1-c1",
    "target": "gsm8k",
    "variant": "random",
}
# the top-level folders of the store: a string starting with one of them is a key
STORE_FOLDERS = (
    "incoming|raw|scores|sft|models|refined|pools|targets|influence|selections|eval|reports"
)


def _built_keys() -> set[str]:
    s = SAMPLE
    return {
        layout.incoming_key(s["file"]),
        layout.raw_run_key(s["shard"], s["run_id"]),
        layout.scores_key(s["shard"]),
        *(layout.sft_split_key(s["level"], s["version"], x) for x in ("train", "val", "rejected")),
        layout.refiner_prefix(s["level"], s["version"]) + "/",
        layout.refined_key(s["refiner_version"], s["shard"]),
        layout.pool_manifest_key(s["refiner_version"]),
        layout.target_key(s["target"], "target"),
        layout.target_key(s["target"], "heldout"),
        layout.influence_scores_key(s["target"], s["version"]),
        layout.influence_landmarks_key(s["target"], s["version"]),
        layout.selection_key(s["target"], s["version"]),
        layout.checkpoint_prefix(s["target"], s["variant"], s["version"]) + "/",
        layout.HELDOUT_PROSE_KEY,
        layout.evaluation_report_key(s["target"], "parquet"),
        layout.evaluation_report_key(s["target"], "png"),
    }


def _listed_keys(text: str) -> set[str]:
    """The keys of a "where things live" list (lines indented 4 spaces), filled in with SAMPLE."""
    keys = set()
    for pattern in re.findall(r"^ {4}(\S+)", text, re.MULTILINE):
        if not re.match(rf"({STORE_FOLDERS})/", pattern):
            continue
        filled = re.sub(r"<(\w+)>", lambda m: SAMPLE[m.group(1)], pattern)
        parts = re.split(r"\{([^}]*)\}", filled)  # {a,b} alternatives
        choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        keys |= {"".join(c) for c in itertools.product(*choices)}
    return keys


def test_the_layout_builds_what_its_docstring_and_the_readme_list():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Where things live", 1)[1].split("```")[1]
    assert _listed_keys(layout.__doc__ or "") == _built_keys()
    assert _listed_keys(section) == _built_keys()


def test_keys_keep_their_spelling():
    assert layout.raw_run_key("s1", "r1") == "raw/s1/r1.parquet"
    assert layout.legacy_raw_key("s1") == "raw/s1.parquet"
    assert (
        layout.refined_part_key("v", "s1", 2, 10, "0123abcd")
        == "refined/v/.parts/s1/part-00002-of-00010-0123abcd.parquet"
    )
    assert layout.checkpoint_prefix("t", "random", "") == "models/checkpoints/t/random/"
    assert layout.influence_scores_key("t", "v") == "influence/t/v/scores.parquet"


def test_no_stage_module_spells_a_store_key():
    """A key is built in layout.py only: a string literal starting with a store folder elsewhere
    is a second spelling of it (a description's ``<placeholder>`` is not)."""
    key_literal = re.compile(rf"""(?<![\w/.])f?["']({STORE_FOLDERS})/[^"'<]*["']""")
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted([*REPO.glob("prox_assets/**/*.py"), *REPO.glob("prox_resources/*.py")])
        if path.name != "layout.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if key_literal.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_layout_imports_no_dagster():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, prox_assets.layout; print('dagster' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip() == "False"
