"""The model paths of this project on a CUDA GPU, with no Dagster and no weights to download.

A GPU machine lent to a session has torch, transformers and peft but none of this project's other
dependencies and no network, and the bundled model's weights are larger than what travels. So this
runs the *pure* core modules (refiner training, influence, the executor) on a model of the bundled
model's exact shape with random weights, which is what throughput and code-path checks need (not
quality). Usage: ``python deploy/gpu/check.py MODEL_CONFIG_DIR OUT.json [CHECK ...]``;
MODEL_CONFIG_DIR holds config.json and the tokenizer files; CHECKs: training, loss_paths,
generation, influence, vllm_refine (default: all; vllm_refine needs vLLM).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prox_assets.core import influence as inf
from prox_assets.core.precision import bf16_is_fast
from prox_assets.core.training_loop import (
    TrainConfig,
    attach_adapters,
    causal_lm_loss,
    run_training,
)


def _sync():
    torch.cuda.synchronize()


def _model(config_dir: str, dtype=torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(config_dir), dtype=dtype
    ).cuda()


def training(config_dir: str) -> dict:
    """Seconds per step and tokens/s of the refiner's training loop (bf16 autocast vs fp32)."""
    out = {}
    enc = [(list(range(1000, 1520)), [-100] * 480 + list(range(1000, 1040))) for _ in range(64)]
    for method, layers in (("lora", 10), ("full", None)):
        for dtype in ("float32", "auto"):
            model = attach_adapters(
                _model(config_dir), TrainConfig(method=method, lora_layers=layers)
            )
            cfg = TrainConfig(
                method=method,
                lora_layers=layers,
                max_steps=10,
                batch_size=16,
                dtype=dtype,
                warmup_steps=1,
            )
            # warm-up: kernels, allocator
            run_training(model, enc, dataclasses.replace(cfg, max_steps=2), 0, device="cuda")
            _sync()
            t = time.perf_counter()
            report = run_training(model, enc, cfg, 0, device="cuda")
            _sync()
            dt = (time.perf_counter() - t) / 10
            out[f"{method}_{dtype}"] = {
                "s_per_step": round(dt, 4),
                "tokens_per_s": round(report.tokens_seen / 10 / dt),
            }
            del model
            torch.cuda.empty_cache()
    return out


def loss_paths(config_dir: str) -> dict:
    """One bf16-autocast training step (forward and backward, LoRA on every block) with the
    model's own loss over all logits against ``causal_lm_loss`` (only the labelled positions
    reach the vocabulary), on SFT-shaped rows: 480 prompt tokens, then a 40-token program."""
    model = attach_adapters(_model(config_dir), TrainConfig(lora_layers=None))
    model.train()
    ids = torch.randint(1000, 20000, (16, 520), device="cuda")
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[:, 480:] = ids[:, 480:]

    def step(loss_of) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    paths = {
        "model_loss": lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
        "causal_lm_loss": lambda: causal_lm_loss(model, ids, mask, labels.cpu()),
    }
    out: dict = {}
    for name, loss_of in paths.items():
        step(loss_of)  # warm-up
        _sync()
        t = time.perf_counter()
        for _ in range(10):
            value = step(loss_of)
        _sync()
        out[name] = {"s_per_step": round((time.perf_counter() - t) / 10, 4), "loss": value}
    out["speedup"] = round(out["model_loss"]["s_per_step"] / out["causal_lm_loss"]["s_per_step"], 2)
    return out


def generation(config_dir: str) -> dict:
    """The transformers backend's batched greedy generation (what refinement runs without vLLM):
    prompt and generated tokens per second, 128 windows of ~480 tokens, 96 new tokens each."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(config_dir, dtype).eval()
        ids = torch.randint(1000, 20000, (128, 480), device="cuda")
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model.generate(
                input_ids=ids[:8], attention_mask=mask[:8], max_new_tokens=4, do_sample=False
            )
            _sync()
            t = time.perf_counter()
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=96,
                min_new_tokens=96,
                do_sample=False,
                pad_token_id=0,
            )
            _sync()
        dt = time.perf_counter() - t
        new = gen.shape[1] - ids.shape[1]
        out[str(dtype).removeprefix("torch.")] = {
            "seconds": round(dt, 3),
            "windows_per_s": round(128 / dt, 1),
            "generated_tokens_per_s": round(128 * new / dt),
            "all_tokens_per_s": round(128 * (480 + new) / dt),
        }
        del model
        torch.cuda.empty_cache()
    return out


def influence(config_dir: str) -> dict:
    """compute_influence end to end on the GPU, bf16 against fp32 on the same random model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    words = [
        "the",
        "a",
        "of",
        "model",
        "data",
        "gradient",
        "loss",
        "train",
        "token",
        "layer",
        "value",
        "score",
        "sample",
        "target",
        "pool",
    ]
    g = torch.Generator().manual_seed(0)
    pool = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (60,), generator=g))
        for _ in range(256)
    ]
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(16)]
    answers = [f" {2 * i}" for i in range(16)]
    out, scores = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = _model(config_dir)
        cfg = inf.InfluenceConfig(
            landmarks=32, exact_holdout=32, warmup_steps=4, batch_size=16, dtype=dtype
        )
        t = time.perf_counter()
        result = inf.compute_influence(
            model, tokenizer, pool, prompts, answers, cfg, log=lambda m: None
        )
        _sync()
        out[dtype] = {
            "seconds": round(time.perf_counter() - t, 2),
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "accuracy": {k: round(v, 3) for k, v in result.accuracy.items()},
        }
        scores[dtype] = result.exact_landmarks.float().cpu()
        del model
        torch.cuda.empty_cache()
    out["exact_landmark_scores_bf16_vs_fp32_spearman"] = round(
        inf.spearman(scores["float32"].flatten(), scores["bfloat16"].flatten()), 4
    )
    return out


def vllm_refine(config_dir: str) -> dict:
    """``prox bench refine`` through vLLM: both refinement stages (the refined_corpus budgets) on
    real sample documents (``texts.json.gz`` beside MODEL_CONFIG_DIR: a JSON list of raw
    documents, e.g. a PROX_HOME's raw corpus in random order), tokens/s on this GPU. The weights
    are random (they cannot travel), saved once so that the transformers backend (the baseline:
    same documents, same weights, same run; ``refine_benchmark`` reports vLLM's speed-up over it
    and how often their programs agree) and vLLM serve the same model. With random weights most
    programs run to the token limit, so documents/s is a floor and tokens/s the figure."""
    import gzip
    import shutil

    from prox_assets.benchmarks import refine_benchmark
    from prox_assets.core.chunking import DEFAULT_DOC_MAX_TOKENS, DEFAULT_WINDOW_TOKENS
    from prox_assets.core.refiner_training import FALLBACK_PROGRAM_TOKENS
    from prox_resources.backends import TransformersBackend, VLLMBackend

    with gzip.open(Path(config_dir).parent / "texts.json.gz", "rt") as f:
        texts = json.load(f)
    weights = Path("/tmp/gpu_check_random_model")
    _model(config_dir, torch.bfloat16).save_pretrained(weights)
    for f in Path(config_dir).iterdir():  # tokenizer and chat template
        if not (weights / f.name).exists():
            shutil.copy(f, weights / f.name)
    sizes = (DEFAULT_DOC_MAX_TOKENS, DEFAULT_WINDOW_TOKENS, FALLBACK_PROGRAM_TOKENS)
    out: dict = {}
    engines: dict = {}

    def load(backend: str):
        """refine_benchmark's ``load``: here its "dtypes" name backends, vLLM started once."""
        if backend == "transformers":
            tf = TransformersBackend(str(weights), "cuda", torch.bfloat16)
            return tf, tf
        if "vllm" not in engines:
            # GPU_CHECK_VLLM_ATTENTION: another attention backend (e.g. TRITON_ATTN)
            attention = os.environ.get("GPU_CHECK_VLLM_ATTENTION")
            t = time.perf_counter()
            engines["vllm"] = VLLMBackend(
                str(weights),
                dtype="bfloat16",
                **({"attention_backend": attention} if attention else {}),
            )
            out["vllm_engine_start_s"] = round(time.perf_counter() - t, 1)
            out["vllm_attention_backend"] = attention or "default"
        return engines["vllm"], engines["vllm"]

    out["against_transformers"] = refine_benchmark(
        texts[:64], load, *sizes, dtypes=("transformers", "vllm"), device="cuda"
    )
    print("against transformers", json.dumps(out["against_transformers"]), flush=True)
    out["vllm_large"] = refine_benchmark(
        texts[:1000], load, *sizes, dtypes=("vllm",), device="cuda"
    )
    return out


def main() -> None:
    config_dir, out_path = sys.argv[1], sys.argv[2]
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "bf16_is_fast": bf16_is_fast("cuda"),
    }
    checks = {
        "training": training,
        "loss_paths": loss_paths,
        "generation": generation,
        "influence": influence,
        "vllm_refine": vllm_refine,
    }
    for name in sys.argv[3:] or checks:  # optional: the names of the checks to run
        check = checks[name]
        t = time.perf_counter()
        try:
            report[name] = check(config_dir)
        except Exception as exc:  # noqa: BLE001  report every check, even after one fails
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(report[name]), flush=True)
    Path(out_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
