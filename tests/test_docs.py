"""docs/methods.md: every section the code, the README and the file itself point to exists."""

import re

from prox_resources.settings import REPO_ROOT

METHODS = REPO_ROOT / "docs" / "methods.md"
CITED = re.compile(r"docs/methods\.md#([\w-]+)")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors() -> set[str]:
    text = METHODS.read_text()
    return {anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_the_anchor_rule():
    assert anchor("The evidence: checkpoint variants") == "the-evidence-checkpoint-variants"
    assert anchor("Warm-up and the Adam preconditioner") == "warm-up-and-the-adam-preconditioner"


def test_every_cited_section_of_the_methods_exists():
    known = anchors()
    files = [
        *REPO_ROOT.glob("prox_assets/**/*.py"),
        *REPO_ROOT.glob("prox_resources/**/*.py"),
        REPO_ROOT / "README.md",
    ]
    cited = {
        (str(f.relative_to(REPO_ROOT)), m) for f in files for m in CITED.findall(f.read_text())
    }
    assert len(cited) >= 10  # the core modules point at their sections
    assert not [c for c in cited if c[1] not in known]
    own = re.findall(r"\]\(#([\w-]+)\)", METHODS.read_text())  # the contents and cross-references
    assert own and not [a for a in own if a not in known]
