"""The one place model weights are loaded (owned by the engine, ``prox_resources/engine.py``).

Every model step gets its weights from here through the ``engine`` resource, on the device of the
``device`` resource: generation backends, training (refiners, checkpoints), influence, evaluation,
and the one-off GGUF conversion of the default model. No other module imports transformers'
model classes; core functions receive the model object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class LoadedModel(NamedTuple):
    """A causal LM and its tokenizer, in this process."""

    model: Any
    tokenizer: Any


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def architecture_parameters(path: str | Path) -> int:
    """Parameters of the model ``path`` describes, counted on a weightless (meta-device) copy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def load_causal_lm(
    path: str | Path,
    device: str = "cpu",
    dtype=None,
    adapter: str | Path | None = None,
    train: bool = False,
) -> LoadedModel:
    """The model in ``path`` (``save_pretrained`` layout) on ``device``; ``dtype`` None: float32
    (training and influence need it). ``adapter``: a LoRA adapter folder merged into it, or a full
    checkpoint folder loaded instead. Eval mode unless ``train``."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if adapter is not None and (Path(adapter) / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        tokenizer = load_tokenizer(adapter)
    else:
        source = path if adapter is None else adapter
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = load_tokenizer(source)
    model = model.to(device)
    model.train() if train else model.eval()
    return LoadedModel(model, tokenizer)


def convert_gguf(folder: str, filename: str, target: Path) -> None:
    """Dequantise a GGUF model once and save it as safetensors in ``target``, atomically."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # transformers marks GGUF-loaded models as quantised and will not save them: copy the
    # dequantised fp32 weights into a plain model built from the same config. Its random
    # initialisation (~3 s on a 2-core CPU) is skipped, as from_pretrained skips it: the strict
    # load overwrites every weight. Skipping it skips the tying of the output head to the
    # embeddings too, so that is done here (a tied head is saved once, as before).
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-converted model never looks finished
    except FileExistsError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
