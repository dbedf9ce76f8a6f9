"""The model engine resource: which backend (``backends.py``) and model each step uses, loaded
once per run step."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Literal

import dagster as dg
from pydantic import PrivateAttr

from prox_resources.backends import (
    EngineBackend,
    OpenAIBackend,
    TransformersBackend,
    VLLMBackend,
)
from prox_resources.device import DeviceSettings
from prox_resources.loader import LoadedModel, load_causal_lm
from prox_resources.models import DEFAULT_MODEL, resolve_model
from prox_resources.settings import ProxSettings, default_base_model


# --- the resource ------------------------------------------------------------------------------
class ModelEngine(dg.ConfigurableResource):
    """Which backend and model the scorer, annotator and refiner steps use, and which local
    model everything trained or measured builds on (``base``)."""

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = DEFAULT_MODEL  # alias, local folder, or (openai) the served model's name
    # the local model the SFT tokenizer, refiners, influence and checkpoints build on; None:
    # settings.default_base_model (``model`` under transformers, else DEFAULT_MODEL)
    base_model: str | None = None
    base_url: str | None = None  # openai: e.g. http://host:8000/v1
    api_key: str | None = None  # openai: read from the environment (EnvVar), never a file
    max_batch_size: int = 16
    max_batch_tokens: int = 16384
    gpu_memory_utilization: float = 0.85

    _cache: dict = PrivateAttr(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ProxSettings, env_vars: bool = True) -> ModelEngine:
        """The engine the settings name: what Dagster runs get and what the CLI uses.
        ``env_vars``: the OpenAI server and key as ``EnvVar`` references, resolved inside a run
        (the UI shows the variable's name, never its value); without (the CLI, outside any run)
        they are left unset and read from the settings when a model loads."""

        def ref(name: str) -> str | None:
            return dg.EnvVar(name) if env_vars and name in settings.given else None

        return cls(
            backend=settings.engine_backend,
            model=settings.model,
            base_model=settings.base_model,
            base_url=ref("PROX_OPENAI_BASE_URL"),
            api_key=ref("OPENAI_API_KEY"),
        )

    @property
    def base(self) -> str:
        """The base model: ``base_model``, else the settings' default for this backend."""
        return self.base_model or default_base_model(self.backend, self.model)

    def base_or(self, configured: str | None) -> str:
        """An asset config's model if it names one (non-empty), else the engine's base model."""
        return configured or self.base

    def local(self) -> ModelEngine:
        """An engine that runs models in this process: a freshly trained checkpoint cannot be
        reached over HTTP, so the openai backend falls back to transformers (on the base model)."""
        if self.backend != "openai":
            return self
        return ModelEngine(
            backend="transformers",
            model=self.base,
            base_model=self.base,
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )

    def load_model(
        self,
        device: DeviceSettings | None = None,
        model: str | None = None,
        adapter: str | os.PathLike | None = None,
        train: bool = False,
    ) -> LoadedModel:
        """A model's weights in this process, float32, on the device resource's device: for
        training, influence and evaluation (``load`` serves generation). ``model``: an alias or
        folder (default: the base model); ``adapter``: a checkpoint on top of it."""
        name = model or self.base
        return load_causal_lm(
            resolve_model(name),
            (device or DeviceSettings()).resolve_device(),
            adapter=None if adapter is None else os.fspath(adapter),
            train=train,
        )

    def serve(self, loaded: LoadedModel, device: DeviceSettings | None = None) -> EngineBackend:
        """A generation/scoring backend over an in-memory model (a checkpoint under evaluation)."""
        return TransformersBackend(
            getattr(loaded.model, "name_or_path", "in-memory"),
            (device or DeviceSettings()).resolve_device(),
            None,
            self.max_batch_size,
            self.max_batch_tokens,
            loaded=loaded,
        )

    def load(
        self,
        device: DeviceSettings | None = None,
        model: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> EngineBackend:
        """The backend for ``model`` (default: this engine's model) on ``device``, loaded once per
        resource instance, i.e. once per run step: every partition of a multi-partition run shares
        it. Keyed by model, device and dtype settings. ``log`` hears of each actual load."""
        name = model or self.model
        device = device or DeviceSettings()
        key = (name, device.device, device.dtype)
        if key in self._cache:
            return self._cache[key]
        started = time.monotonic()
        if self.backend == "openai":
            settings = ProxSettings.from_environment()  # unset fields: the CLI's engine
            base_url = self.base_url or settings.openai_base_url
            if not base_url:
                raise ValueError("backend='openai' needs base_url (or PROX_OPENAI_BASE_URL)")
            backend: EngineBackend = OpenAIBackend(
                base_url, name, self.api_key or settings.openai_api_key
            )
        elif self.backend == "vllm":
            backend = VLLMBackend(
                str(resolve_model(name)),
                dtype=device.dtype,
                gpu_memory_utilization=self.gpu_memory_utilization,
            )
        else:
            backend = TransformersBackend(
                str(resolve_model(name)),
                device.resolve_device(),
                device.resolve_dtype(),
                self.max_batch_size,
                self.max_batch_tokens,
                compute=device.dtype,
            )
        self._cache[key] = backend
        if log:
            log(
                f"loaded model {name} ({self.backend}, device {device.device}, dtype {device.dtype}) "
                f"in {time.monotonic() - started:.1f}s"
            )
        return backend
