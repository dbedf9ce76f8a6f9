"""One loader: model weights come only through the engine (``prox_resources/loader.py``), on the
device resource's device."""

import ast
import re
from pathlib import Path

import torch

from prox_resources.device import DeviceSettings
from prox_resources.engine import ModelEngine

REPO = Path(__file__).resolve().parents[2]
MODEL_CLASS = re.compile(r"AutoModel\w*|\w+(ForCausalLM|PreTrainedModel|Model)|PeftModel\w*")


def test_no_module_but_the_loader_imports_model_classes():
    offenders = []
    for path in sorted([*REPO.glob("prox_assets/**/*.py"), *REPO.glob("prox_resources/**/*.py")]):
        if path == REPO / "prox_resources" / "loader.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "transformers",
                "peft",
            ):
                offenders += [
                    f"{path.relative_to(REPO)}: {a.name}"
                    for a in node.names
                    if MODEL_CLASS.fullmatch(a.name)
                ]
    assert not offenders


def test_the_engine_loads_on_the_device_resources_device(tiny_llama_dir, tmp_path):
    from prox_assets.core.training import train_lm
    from prox_assets.core.training_loop import TrainConfig

    engine = ModelEngine(model=str(tiny_llama_dir))
    model, _tokenizer = engine.load_model(DeviceSettings(device="cpu"))
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    # the device is the resource's, whatever it names ("meta": no memory, no GPU needed)
    on_meta, _ = engine.load_model(DeviceSettings(device="meta"))
    assert next(on_meta.parameters()).device.type == "meta"

    trainable = engine.load_model(DeviceSettings(device="cpu"), train=True)
    assert trainable.model.training
    cfg = TrainConfig(
        method="lora",
        lora_r=4,
        lora_alpha=8,
        lora_layers=1,
        max_steps=1,
        batch_size=1,
        warmup_steps=1,
        max_seq_len=32,
    )
    train_lm(
        trainable.model,
        trainable.tokenizer,
        ["A short text about rivers and the evening light."] * 2,
        cfg,
        tmp_path / "ckpt",
    )
    tuned = engine.load_model(DeviceSettings(device="cpu"), adapter=tmp_path / "ckpt")
    backend = engine.serve(tuned, DeviceSettings(device="cpu"))
    assert backend.model is tuned.model and backend.loglikelihood(["The sky is"], [" blue"])[0] < 0


def test_the_gguf_conversion_saves_the_dequantised_weights_with_the_head_tied(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """``convert_gguf`` copies the dequantised weights into a model built without random
    initialisation: every weight is the GGUF model's, and the tied output head is the embedding
    (saved once). The tiny Llama stands in for transformers' GGUF loading."""
    import transformers
    from safetensors.torch import load_file

    from prox_resources.loader import convert_gguf

    source = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: source
    )
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    convert_gguf("unused", "unused.gguf", tmp_path / "converted")
    monkeypatch.undo()

    saved = load_file(tmp_path / "converted" / "model.safetensors")
    expected = {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    assert saved.keys() == expected.keys()  # the tied head is not saved a second time
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    model, _ = ModelEngine(model=str(tmp_path / "converted")).load_model(
        DeviceSettings(device="cpu")
    )
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
