"""ProxSettings: the one reading of the environment, its defaults and overrides, and what the
Dagster resources and the CLI build from it."""

import json
import re
from pathlib import Path

import pytest

from prox_resources.settings import (
    DEFAULT_MODEL,
    EXECUTORS,
    REPO_ROOT,
    ProxSettings,
    SettingError,
)

PACKAGES = [REPO_ROOT / "prox_assets", REPO_ROOT / "prox_resources"]


def test_defaults_from_an_empty_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = ProxSettings.from_environment({})
    home = tmp_path / ".prox"
    assert s.home == home and s.store == str(home / "store")
    assert s.catalog == str(home / "catalog.duckdb")
    assert s.catalog_data == str(home / "store" / "catalog") + "/"
    assert s.downloads == home / "downloads"
    assert (s.engine_backend, s.model, s.base_model) == (
        "transformers",
        DEFAULT_MODEL,
        DEFAULT_MODEL,
    )
    assert (s.device, s.dtype, s.partitions_per_run, s.executor) == ("auto", "auto", 32, "")
    assert s.celery_backend is None and s.celery_visibility_timeout == 21600
    assert s.openai_base_url is s.openai_api_key is s.dagster_home is None
    assert s.aws == {} and s.given == frozenset()


def test_every_variable_is_read_once_into_its_field(tmp_path):
    env = {
        "PROX_HOME": str(tmp_path / "h"),
        "PROX_STORE": "s3://bucket/prox/",
        "PROX_CATALOG": "ducklake:postgres:dbname=prox",
        "PROX_DOWNLOADS": str(tmp_path / "d"),
        "PROX_ENGINE_BACKEND": "openai",
        "PROX_MODEL": "served-name",
        "PROX_OPENAI_BASE_URL": "http://x:8000/v1",
        "OPENAI_API_KEY": "k-secret",
        "PROX_DEVICE": "cpu",
        "PROX_DTYPE": "float32",
        "PROX_PARTITIONS_PER_RUN": "0",  # at least one
        "PROX_EXECUTOR": "celery",
        "PROX_CELERY_BROKER": "amqp://u:pw@h//",
        "PROX_CELERY_BACKEND": "redis://h",
        "PROX_CELERY_VISIBILITY_TIMEOUT": "60",
        "PROX_GPU_K8S_CONFIG": "{}",
        "AWS_ENDPOINT_URL": "http://s3:8333",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "DAGSTER_HOME": str(tmp_path / "dg"),
        "UNRELATED": "x",
    }
    s = ProxSettings.from_environment(env)
    assert s.home == tmp_path / "h" and s.downloads == tmp_path / "d"
    # a DuckLake's files default to catalog/ under the store, whatever the store is
    assert s.store == "s3://bucket/prox/" and s.catalog_data == "s3://bucket/prox/catalog/"
    assert s.engine_backend == "openai" and s.model == "served-name"
    # a served model is a scorer: what trains locally is the default model
    assert s.base_model == DEFAULT_MODEL
    assert (s.openai_base_url, s.openai_api_key) == ("http://x:8000/v1", "k-secret")
    assert (s.device, s.dtype, s.partitions_per_run) == ("cpu", "float32", 1)
    assert (s.executor, s.celery_backend, s.celery_visibility_timeout) == (
        "celery",
        "redis://h",
        60,
    )
    assert s.aws == {"AWS_ENDPOINT_URL": "http://s3:8333", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    assert s.given == set(env) - {"UNRELATED"}
    # secrets never in its repr nor in what `prox settings` shows
    shown = json.dumps(s.shown()) + repr(s)
    for secret in ("k-secret", "aws-secret", "u:pw"):
        assert secret not in shown
    assert {e: v for e, v, _ in s.shown()}["OPENAI_API_KEY"] == "(set)"


def test_base_model_follows_the_engine_model_under_transformers_unless_named(tmp_path):
    local = ProxSettings.from_environment({"PROX_HOME": str(tmp_path), "PROX_MODEL": "/m"})
    assert local.base_model == "/m"
    vllm = {"PROX_HOME": str(tmp_path), "PROX_MODEL": "/big", "PROX_ENGINE_BACKEND": "vllm"}
    assert ProxSettings.from_environment(vllm).base_model == DEFAULT_MODEL
    named = ProxSettings.from_environment({**vllm, "PROX_BASE_MODEL": "/small"})
    assert (named.model, named.base_model) == ("/big", "/small")


def test_empty_counts_as_unset_and_bad_values_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = ProxSettings.from_environment({"PROX_HOME": "", "PROX_DEVICE": "", "PROX_EXECUTOR": ""})
    assert s.home == tmp_path / ".prox" and s.device == "auto" and s.executor == ""
    with pytest.raises(ValueError, match="PROX_ENGINE_BACKEND"):
        ProxSettings.from_environment({"PROX_ENGINE_BACKEND": "torch"})
    with pytest.raises(ValueError, match="PROX_PARTITIONS_PER_RUN"):
        ProxSettings.from_environment({"PROX_PARTITIONS_PER_RUN": "many"})
    # a typo ran Dagster's own executor, silently: refused, naming the values it takes
    with pytest.raises(SettingError, match=r"PROX_EXECUTOR='kubernetes'.*k8s, celery"):
        ProxSettings.from_environment({"PROX_EXECUTOR": "kubernetes"})
    with pytest.raises(SettingError, match=r"PROX_HTML_TEXT='main'.*whole, main_content"):
        ProxSettings.from_environment({"PROX_HTML_TEXT": "main"})
    assert ProxSettings.from_environment({}).html_text == "whole"
    assert (
        ProxSettings.from_environment({"PROX_HTML_TEXT": "main_content"}).html_text
        == "main_content"
    )
    for known in EXECUTORS:
        assert ProxSettings.from_environment({"PROX_EXECUTOR": known}).executor == known


def test_overrides_in_code_and_the_live_environment(prox_env, monkeypatch):
    from prox_resources import settings as module

    s = ProxSettings.from_environment()
    assert s.home == prox_env and module.prox_home() == prox_env
    changed = s.replace(model="/other", partitions_per_run=4)
    assert (changed.model, changed.partitions_per_run, changed.home) == ("/other", 4, prox_env)
    assert s.model == DEFAULT_MODEL  # frozen: the original is unchanged
    with pytest.raises(AttributeError):
        s.model = "x"  # type: ignore[misc]
    # the path helpers read the environment anew on each call
    monkeypatch.setenv("PROX_STORE", str(prox_env / "elsewhere"))
    assert module.store_url() == str(prox_env / "elsewhere")
    assert module.catalog_data_path() == str(prox_env / "elsewhere" / "catalog") + "/"


def test_every_setting_is_documented():
    rows = ProxSettings.documented()
    assert len(rows) >= 20
    for name, env, _default, help in rows:
        assert re.fullmatch(r"[A-Z0-9_]+\*?", env) and help, name
    names = [env for _, env, _, _ in rows]
    assert len(names) == len(set(names))


def test_resources_and_the_cli_engine_come_from_one_function(prox_env, monkeypatch):
    """Dagster's engine refers to the OpenAI variables by name; the CLI's, built by the same
    function, leaves them to the settings; both name the same backend, model and base model."""
    from prox_assets.benchmarks import engine_and_device
    from prox_assets.definitions import build_executor, build_resources
    from prox_resources.engine import ModelEngine

    monkeypatch.setenv("PROX_ENGINE_BACKEND", "openai")
    monkeypatch.setenv("PROX_MODEL", "served")
    monkeypatch.setenv("PROX_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k-1")
    monkeypatch.setenv("PROX_DEVICE", "cpu")
    resources = build_resources()
    engine = resources["engine"]
    mine, device = engine_and_device()  # what `prox bench` runs models with
    assert engine.base_url == "PROX_OPENAI_BASE_URL" and engine.api_key == "OPENAI_API_KEY"
    assert mine.base_url is None and mine.api_key is None
    for e in (engine, mine):
        assert (e.backend, e.model, e.base) == ("openai", "served", DEFAULT_MODEL)
        assert (e.local().backend, e.local().model) == ("transformers", DEFAULT_MODEL)
    assert resources["device"].device == device.device == "cpu"
    assert resources["store"].url is None  # PROX_STORE unset: the store's default, read when used
    overridden = build_resources(ProxSettings.from_environment().replace(model="other"))
    assert overridden["engine"].model == "other"
    assert ModelEngine.from_settings(ProxSettings.from_environment()).api_key == "OPENAI_API_KEY"
    assert build_executor(ProxSettings.from_environment().replace(executor="")) is None


def test_prox_settings_command(prox_env):
    from click.testing import CliRunner

    from prox_assets.cli import main

    out = CliRunner().invoke(main, ["settings", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["PROX_HOME"] == str(prox_env) and shown["PROX_MODEL"] == DEFAULT_MODEL
    assert shown["PROX_CELERY_BACKEND"] == "rpc:// (default)"


def _python_files() -> list[Path]:
    return [p for d in PACKAGES for p in d.rglob("*.py")]


def test_the_environment_is_read_in_settings_only():
    """os.environ / getenv outside settings.py: only writes, or a child process's environment
    (scale_bench's scratch home), each marked in place."""
    allowed = {"prox_resources/settings.py", "prox_assets/scale_bench.py"}
    offenders = []
    for path in _python_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        text = path.read_text()
        if rel not in allowed and re.search(r"os\.environ|getenv\(", text):
            offenders.append(rel)
    assert offenders == []
