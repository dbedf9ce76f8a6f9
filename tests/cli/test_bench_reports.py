"""The model benchmarks' bodies live in prox_assets.benchmarks (the `prox bench` commands only
parse arguments): they run on the engine and device the settings name."""

import json

import pytest

from prox_assets.benchmarks import engine_and_device, refine_precision_report, refinement_report
from prox_assets.core.errors import UserError


def test_refine_report_on_the_settings_engine(prox_env, tiny_llama_dir, monkeypatch):
    from prox_assets.ingest import ingest_paths

    monkeypatch.setenv("PROX_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("PROX_DEVICE", "cpu")
    data = prox_env.parent / "in" / "web-00.jsonl"
    data.parent.mkdir()
    data.write_text(
        "".join(
            json.dumps({"text": f"Line one of {i}.\nLine two, with words.\nShare | Tweet"}) + "\n"
            for i in range(4)
        )
    )
    assert ingest_paths([data], echo=lambda _: None) == {"web-00": "ok"}
    engine, device = engine_and_device()
    assert (engine.model, engine.base, device.device) == (str(tiny_llama_dir),) * 2 + ("cpu",)
    report = refine_precision_report(2, None, ["float32"])
    assert report["refiner_version"] == f"base model {tiny_llama_dir}"
    assert report["backend"] == "transformers" and report["device"] == "cpu"
    assert report["documents"] == 2 and list(report["by_dtype"]) == ["float32"]
    # the FLOP estimate's parameter count: the backend's own, equal to the architecture's count
    # (what the vLLM backend reports, its weights living in another process)
    from prox_resources.loader import architecture_parameters, load_causal_lm

    loaded = load_causal_lm(tiny_llama_dir)
    params = sum(p.numel() for p in loaded.model.parameters())
    assert report["model_params"] == params == architecture_parameters(tiny_llama_dir)
    run = report["by_dtype"]["float32"]
    assert run["model_tokens_processed"] > 0 and run["tokens_per_second"] > 0
    with pytest.raises(UserError, match="no refiner version"):
        refinement_report(None, 2, 2, 1000, None, [0], log=print)


def test_bench_influence_options_are_the_parameter_objects_fields(monkeypatch):
    """`prox bench influence` parses its options into one InfluenceBench, whose defaults are the
    command's: each parameter and its default is written once."""
    import dataclasses

    from click.testing import CliRunner

    from prox_assets import benchmarks
    from prox_assets.benchmarks import InfluenceBench
    from prox_assets.cli import main

    given = []

    def report(bench, log):
        given.append(bench)
        return {"ok": True}

    monkeypatch.setattr(benchmarks, "influence_report", report)
    runner = CliRunner()
    assert runner.invoke(main, ["bench", "influence"]).exit_code == 0
    args = ["--pool", "40", "--landmarks", "3, 6", "--embeddings", "jvp-last", "--dtype", "float32"]
    out = runner.invoke(main, ["bench", "influence", *args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"ok": True}
    assert given == [
        InfluenceBench(),
        InfluenceBench(pool_size=40, landmarks=(3, 6), embeddings=("jvp-last",), dtype="float32"),
    ]
    help_text = runner.invoke(main, ["bench", "influence", "--help"]).output
    for fld in dataclasses.fields(InfluenceBench):
        assert fld.metadata.get("option", "--" + fld.name.replace("_", "-")) in help_text
    assert "12,24,48,96" in help_text
    bad = runner.invoke(main, ["bench", "influence", "--landmarks", "a,b"])
    assert bad.exit_code != 0 and "comma-separated" in bad.output
