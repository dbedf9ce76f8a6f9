"""`prox demo` as a declarative plan: every asset in data-flow order, configs that only hold what
differs from the assets' own defaults, run by the one generic step runner."""

import dataclasses

import pytest

from prox_assets import runs
from prox_assets.definitions import ASSETS
from prox_assets.demo import BUDGETS, DemoBudget, demo_plan
from prox_assets.refinement import RefineConfig
from prox_assets.refiner_training import RefinerConfig
from prox_assets.scoring import SeedScoresConfig
from prox_assets.selection import InfluenceAssetConfig, SelectionConfig
from prox_assets.synthesis import SFTConfig
from prox_assets.targets import TargetConfig
from prox_assets.training import CheckpointConfig

CONFIGS = {
    "seed_scores": SeedScoresConfig,
    "sft_programs": SFTConfig,
    "refiner": RefinerConfig,
    "refined_corpus": RefineConfig,
    "target_set": TargetConfig,
    "landmark_influence": InfluenceAssetConfig,
    "selected_subset": SelectionConfig,
    "trained_checkpoint": CheckpointConfig,
}


class FakeState(runs.PlanState):
    def __init__(self, version):
        super().__init__(uploaded=["a-00", "b-00"])
        self.version = version

    @property
    def shards(self):
        return ["a-00", "b-00"]

    @property
    def refiner_version(self):
        return self.version


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_every_asset_in_data_flow_order_with_only_non_default_config(budget):
    plan = demo_plan(DemoBudget(budget=budget))
    order = [a.key.to_user_string() for a in ASSETS]
    assets = list(dict.fromkeys(s.asset for s in plan))
    assert assets == order  # every asset of the graph, once, in ASSETS' (data-flow) order
    for step in plan:
        if not step.config:
            continue
        config_class = CONFIGS[step.asset]
        config_class(**step.config)  # every key a field, every value valid
        for key, value in step.config.items():
            field = config_class.model_fields[key]
            assert field.is_required() or field.default != value, (step.asset, key)


def test_options_left_unset_are_the_assets_own_defaults():
    plan = {(s.asset, tuple(s.keys(FakeState("v1")))): s.config for s in demo_plan(DemoBudget())}
    assert plan[("seed_scores", ("a-00", "b-00"))] == {}
    assert "annotator" not in plan[("sft_programs", ("doc", "chunk"))]
    set_ = demo_plan(DemoBudget(seeds_per_shard=3, annotator="both", refiner_steps=5))
    assert set_[1].config == {"seeds_per_shard": 3}
    assert set_[2].config["annotator"] == "both"
    assert [s.config["max_steps"] for s in set_ if s.asset == "refiner"] == [5, 5]


def test_the_generic_runner_follows_the_plan(monkeypatch):
    calls, registered = [], []

    def fake_materialize(asset, keys, config=None, echo=print, per_run=0):
        calls.append((asset, list(keys), dict(config or {})))
        # one of the two targets fails from its target set on: the plan goes on with the other
        return {k: "failed: boom" if k.startswith("arc-challenge") else "ok" for k in keys}

    monkeypatch.setattr(runs, "materialize_partitions", fake_materialize)
    monkeypatch.setattr(runs, "register_partitions", lambda a, k: registered.append((a, list(k))))
    lines = []
    outcome = runs.run_plan(
        demo_plan(DemoBudget(checkpoint_targets="gsm8k")), FakeState("v1"), echo=lines.append
    )
    assert [c[0] for c in calls] == [
        "raw_corpus",
        "seed_scores",
        "sft_programs",
        "refiner",
        "refiner",
        "refined_corpus",
        "refined_pool",
        "target_set",
        "target_set",
        "landmark_influence",
        "selected_subset",
        "trained_checkpoint",
        "evaluation_report",
    ]
    assert calls[5][1] == ["v1|a-00", "v1|b-00"] and calls[6][1] == ["v1"]
    assert calls[7][2] == {"task": "gsm8k", "n_heldout": 100}
    assert registered == [("target_set", ["gsm8k"]), ("target_set", ["arc-challenge"])]
    assert len(calls[11][1]) == len(calls[11][1]) and all(
        k.startswith("gsm8k|") for k in calls[11][1]
    )
    assert "== refined_corpus (refiner v1, 4 documents per shard)" in lines
    assert runs.failed(outcome) == [
        "target_set[arc-challenge]",
        "landmark_influence[arc-challenge]",
        "selected_subset[arc-challenge]",
    ]

    # no refiner version: everything from the refined corpus on is skipped
    calls.clear()
    runs.run_plan(demo_plan(DemoBudget()), FakeState(None), echo=lines.append)
    assert [c[0] for c in calls][-1] == "refiner"


def test_a_step_whose_every_partition_failed_stops_the_plan(monkeypatch):
    calls = []

    def fake_materialize(asset, keys, config=None, echo=print, per_run=0):
        calls.append(asset)
        return dict.fromkeys(keys, "failed: boom" if asset == "refined_corpus" else "ok")

    monkeypatch.setattr(runs, "materialize_partitions", fake_materialize)
    monkeypatch.setattr(runs, "register_partitions", lambda a, k: None)
    lines = []
    outcome = runs.run_plan(demo_plan(DemoBudget()), FakeState("v1"), echo=lines.append)
    assert calls[-1] == "refined_corpus" and "refined_pool" not in calls
    assert any(line.startswith("== every refined_corpus partition failed") for line in lines)
    assert "refined_pool[*]" in runs.failed(outcome)
    assert "evaluation_report[*]" in runs.failed(outcome)


def test_the_command_options_are_the_budget_fields():
    from click.testing import CliRunner

    from prox_assets.cli import main

    help_text = CliRunner().invoke(main, ["demo", "--help"]).output
    for field in dataclasses.fields(DemoBudget):
        assert "--" + field.name.replace("_", "-") in help_text
    assert "[default: 4000]" in help_text and "cpu-large" in help_text
