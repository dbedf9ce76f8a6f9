"""Evaluating several checkpoints of one base model on the same inputs without recomputing the
blocks they share.

A LoRA checkpoint on the top N blocks (``TrainConfig.lora_layers``) leaves the embeddings and every
block below them as the base model has them, bit for bit, so on the same evaluation inputs those
bottom blocks compute the same tensors for every checkpoint: on a 2-core CPU ~85% of each of the
demo's checkpoint evaluations. ``SharedTrunk`` computes them once: the first model evaluated (the
reference) records, per forward call, the hidden states leaving the bottom ``depth`` blocks and the
keys and values each of those blocks appends to the cache; a later model whose bottom blocks equal
the reference's (checked, parameter by parameter) replays them for a call with the same inputs and
runs only its own top blocks. Same weights, same inputs, same kernels: the tensors it replays are
the ones it would compute, so metrics do not change (tests compare them exactly).

A call is recognised by its inputs (token ids, attention mask, positions, the cache it continues);
a cache is recognised by the call that filled it, or else by its contents. Anything else (input
embeddings, another cache class) is computed as usual. Decoder-only Hugging Face models with
``get_decoder().layers`` (Llama, SmolLM, Qwen, ...).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

# What the reference may record (hidden states and the bottom blocks' keys and values, all calls):
# the demo's ARC evaluation records ~150 MB.
MAX_RECORDED_BYTES = 2 << 30
_TAG = "_prox_shared_trunk"  # on a cache: the key of the call that filled it, and its tensors


@dataclass
class _Record:
    hidden: torch.Tensor | None = None  # leaving block depth - 1
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    bytes: int = 0


@dataclass
class _Call:
    key: bytes | None  # None: not recognisable, computed and not recorded
    mode: str  # "replay", "record" or "compute"
    record: _Record | None = None
    ok: bool = True  # False: something unexpected while recording; the record is dropped


class SharedTrunk:
    """The bottom ``depth`` decoder blocks' outputs, computed by the first model evaluated and
    replayed for the later ones that share those blocks (``sharing``). One per set of evaluation
    inputs (e.g. per target): only the reference's calls are recorded."""

    def __init__(self, depth: int, max_bytes: int = MAX_RECORDED_BYTES):
        self.depth = depth
        self.max_bytes = max_bytes
        self.replayed = 0  # forward calls whose bottom blocks were replayed
        self.computed = 0  # forward calls computed in full (the reference's, and misses)
        self._reference: list[torch.Tensor] | None = None
        self._records: dict[bytes, _Record] = {}
        self._bytes = 0
        self._call: _Call | None = None

    @classmethod
    def for_lora(cls, n_layers: int, lora_layers: int | None, method: str) -> SharedTrunk | None:
        """The trunk LoRA checkpoints with adapters on the top ``lora_layers`` blocks share
        (None where every block is trained: full fine-tuning, or adapters on every block)."""
        if method != "lora" or not lora_layers or lora_layers >= n_layers:
            return None
        return cls(n_layers - lora_layers)

    @contextmanager
    def sharing(self, model) -> Iterator[bool]:
        """While the block runs, ``model``'s forward calls replay what the reference recorded
        (or, for the first model, record it). Yields whether ``model`` shares the trunk."""
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        if decoder is None or layers is None or not 0 < self.depth <= len(layers):
            yield False
            return
        bottom = _bottom_tensors(decoder, self.depth)
        if self._reference is None:
            self._reference, recording = bottom, True
        elif _equal(bottom, self._reference):
            recording = False
        else:
            yield False
            return
        handles = [
            decoder.register_forward_pre_hook(
                lambda m, a, kw: self._begin(a, kw, recording), with_kwargs=True
            ),
            decoder.register_forward_hook(
                lambda m, a, kw, out: self._end(out), with_kwargs=True, always_call=True
            ),
        ]
        patched = []
        for j in range(self.depth):
            layer = layers[j]
            patched.append((layer, layer.__dict__.get("forward")))
            layer.forward = _LayerForward(self, j, layer.forward)
        try:
            yield True
        finally:
            for handle in handles:
                handle.remove()
            for layer, own in patched:
                if own is None:
                    del layer.forward
                else:
                    layer.forward = own
            self._call = None

    # --- per forward call of the decoder ---------------------------------------------------------
    def _begin(self, args: tuple, kwargs: dict, recording: bool) -> None:
        key = self._key(args, kwargs)
        if key is not None and key in self._records:
            self._call = _Call(key, "replay", self._records[key])
            self.replayed += 1
        elif key is not None and recording and self._bytes < self.max_bytes:
            self._call = _Call(key, "record", _Record())
            self.computed += 1
        else:
            self._call = _Call(key, "compute")
            self.computed += 1

    def _end(self, output: Any) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        record = call.record
        if call.mode == "record" and call.ok and call.key and record and record.hidden is not None:
            self._records[call.key] = record
            self._bytes += record.bytes
        cache = getattr(output, "past_key_values", None)
        if cache is not None:
            layers = _dynamic_layers(cache, self.depth)
            current = _layer_tensors(layers) if layers is not None else []
            tag = None
            if call.key is not None and current and all(t is not None for t in current):
                tag = (call.key, [weakref.ref(t) for t in current])
            setattr(cache, _TAG, tag)

    def _key(self, args: tuple, kwargs: dict) -> bytes | None:
        """What determines the bottom blocks' work in this call, hashed; None if unknown."""
        if args or kwargs.get("inputs_embeds") is not None or kwargs.get("input_ids") is None:
            return None
        digest = hashlib.blake2b(str(self.depth).encode())
        for name in sorted(kwargs):
            value = kwargs[name]
            if name == "past_key_values":
                past = self._cache_key(value)
                if past is None:
                    return None
                digest.update(b"past" + past)
            elif isinstance(value, torch.Tensor):
                digest.update(name.encode() + _tensor_bytes(value))
            elif value is None or isinstance(value, (bool, int, float, str)):
                digest.update(f"{name}={value!r}".encode())
            else:
                return None
        return digest.digest()

    def _cache_key(self, cache) -> bytes | None:
        """A cache by the call that filled it (if its tensors are still those), else by content."""
        if cache is None:
            return b"none"
        layers = _dynamic_layers(cache, self.depth)
        if layers is None:
            return None
        tag = getattr(cache, _TAG, None)
        current = _layer_tensors(layers)
        if (
            tag is not None
            and len(tag[1]) == len(current)
            and all(ref() is t for ref, t in zip(tag[1], current))
        ):
            return b"call" + tag[0]
        digest = hashlib.blake2b(b"content")
        for t in current:
            digest.update(b"-" if t is None else _tensor_bytes(t))
        return digest.digest()


class _LayerForward:
    """Block ``j``'s forward while a model shares the trunk."""

    def __init__(self, trunk: SharedTrunk, j: int, forward):
        self.trunk, self.j, self.forward = trunk, j, forward

    def __call__(self, hidden_states, *args, **kwargs):
        call, j = self.trunk._call, self.j
        cache = kwargs.get("past_key_values")
        if call is None or call.mode == "compute" or call.record is None:
            return self.forward(hidden_states, *args, **kwargs)
        record = call.record
        if call.mode == "replay" and j == 0 and (cache is not None) != (0 in record.kv):
            call.mode = "compute"  # the reference's call had a cache and this one not, or back
            return self.forward(hidden_states, *args, **kwargs)
        if call.mode == "replay":
            if cache is not None:
                keys, values = record.kv[j]
                cache.update(keys, values, j)
            if j == self.trunk.depth - 1:
                return record.hidden.clone()  # type: ignore[union-attr]
            return hidden_states  # the next block ignores it: only the last one's output is used
        out = self.forward(hidden_states, *args, **kwargs)
        if cache is not None:
            layers = _dynamic_layers(cache, self.trunk.depth)
            if layers is None:
                call.ok = False
            else:
                new = hidden_states.shape[-2]  # the positions this call appended
                keys = layers[j].keys[..., -new:, :].clone()
                values = layers[j].values[..., -new:, :].clone()
                record.kv[j] = (keys, values)
                record.bytes += _nbytes(keys) + _nbytes(values)
        if j == self.trunk.depth - 1:
            record.hidden = out.clone()  # the blocks above may work on theirs in place
            record.bytes += _nbytes(out)
        return out


def _dynamic_layers(cache, depth: int) -> list | None:
    """The cache's first ``depth`` layers, if it is a cache of appended keys and values."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < depth:
        return None
    bottom = list(layers[:depth])
    if not all(type(layer) is DynamicLayer for layer in bottom):
        return None
    return bottom


def _layer_tensors(layers: list) -> list[torch.Tensor | None]:
    return [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]


def _bottom_tensors(decoder, depth: int) -> list[torch.Tensor]:
    """Everything the bottom ``depth`` blocks' outputs depend on besides the inputs: the
    embeddings, the rotary tables and the blocks' own parameters and buffers."""
    modules = [decoder.get_input_embeddings(), getattr(decoder, "rotary_emb", None)]
    modules += list(decoder.layers[:depth])
    return [
        t
        for module in modules
        if module is not None
        for t in (*module.parameters(), *module.buffers())
    ]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b)
    )


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    head = f"{tuple(t.shape)}{t.dtype}".encode()
    return head + t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
