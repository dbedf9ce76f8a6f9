"""target_set: a target is an asset (a run with its config, lineage, a data version), registered
by `prox target add` and add_target through the same materialization."""

import json
import os
import subprocess
from pathlib import Path
from typing import get_args

import dagster as dg
import pytest

from prox_assets.core.errors import UserError
from prox_assets.core.targets import TASK_NAMES
from prox_assets.definitions import ASSETS, defs
from prox_assets.lineage import recorded
from prox_assets.partitions import target_partitions
from prox_assets.targets import TargetConfig, Task, add_target
from prox_resources.catalog import Catalog
from prox_resources.settings import REPO_ROOT
from prox_resources.store import ObjectStore
from tests.support.paths import BIN


def test_the_config_knows_every_task_and_names_no_default_task():
    assert set(get_args(Task)) == set(TASK_NAMES)
    assert TargetConfig.model_fields["task"].is_required()


def test_selection_and_training_depend_on_the_target():
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey("target_set")
    children = {k.to_user_string() for k in graph.get(key).child_keys}
    assert {"landmark_influence", "trained_checkpoint"} <= children
    assert any(a.key == key for a in ASSETS)


def test_add_target_materializes_the_asset_with_lineage(prox_env):
    from prox_assets.runs import instance

    lines = []
    uri = add_target("arc-t", "arc_challenge", 3, 5, 0, echo=lines.append)
    assert len(lines) == 1 and "target_set[arc-t] ok" in lines[0] and "n_target=3" in lines[0]
    store = ObjectStore()
    assert uri == store.uri("targets/arc-t")
    assert store.read_parquet("targets/arc-t/target.parquet").height == 3
    assert store.read_parquet("targets/arc-t/heldout.parquet").height == 5

    found = recorded(instance(), "target_set", "arc-t")
    assert found is not None and found.value("task") == "arc_challenge"
    assert found.data_version == found.value("target_version")
    row = Catalog().query("SELECT * FROM targets WHERE target = 'arc-t'").to_dicts()
    assert len(row) == 1
    assert row[0]["run_id"] == found.run_id and row[0]["partition_key"] == "arc-t"
    assert (row[0]["task"], row[0]["n_target"], row[0]["n_heldout"]) == ("arc_challenge", 3, 5)
    run = instance().get_run_by_id(found.run_id)
    assert run.run_config["ops"]["target_set"]["config"]["task"] == "arc_challenge"

    # drawn again with another seed: a new materialization, a new data version, one catalog row
    add_target("arc-t", "arc_challenge", 3, 5, 1)
    again = recorded(instance(), "target_set", "arc-t")
    assert again.run_id != found.run_id and again.data_version != found.data_version
    assert Catalog().query("SELECT count(*) n FROM targets")["n"][0] == 1
    # TargetConfig's defaults for what is not given
    add_target("arc-d", "arc_challenge")
    assert ObjectStore().read_parquet("targets/arc-d/heldout.parquet").height == (
        TargetConfig.model_fields["n_heldout"].default
    )


def test_a_target_that_cannot_be_drawn_leaves_nothing_registered(prox_env):
    from prox_assets.runs import instance

    with pytest.raises(UserError, match="examples asked"):
        add_target("too-many", "arc_challenge", 2, 10_000_000, 0)
    assert not instance().has_dynamic_partition(target_partitions.name, "too-many")
    assert not ObjectStore().exists("targets/too-many/target.parquet")
    with pytest.raises(UserError, match="unknown task"):
        add_target("nope", "no_such_task", 2, 2, 0)
    with pytest.raises(UserError, match="n_target >= 1"):
        add_target("zero", "arc_challenge", 0, 2, 0)
    assert instance().get_dynamic_partitions(target_partitions.name) == []


def _prox(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_"))}
    env["PROX_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [BIN / "prox", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_prox_target_add_materializes_target_set(tmp_path):
    home = tmp_path / "home"
    proc = _prox(home, "target", "add", "t1", "--task", "arc_challenge", "--n-target", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "target_set[t1] ok" in proc.stdout and "target t1: arc_challenge examples" in proc.stdout
    rows = json.loads(
        _prox(home, "catalog", "--json", "SELECT target, n_target, run_id FROM targets").stdout
    )
    assert rows[0]["target"] == "t1" and rows[0]["n_target"] == 2 and rows[0]["run_id"]
    refused = _prox(home, "target", "add", "t2", "--task", "chess")
    assert refused.returncode == 2 and "chess" in refused.stderr
    failed = _prox(
        home, "target", "add", "t3", "--task", "arc_challenge", "--n-heldout", "99999999"
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "examples asked" in failed.stderr
