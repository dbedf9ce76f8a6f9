"""Accelerator settings: which device and dtype model work uses.

``auto`` picks CUDA when a GPU is visible and the CPU otherwise. Steps that use a GPU declare
``pool="gpu"``; dagster.yaml limits that pool to one step at a time, so GPU steps never share one.
"""

from __future__ import annotations

import json
from typing import Literal

import dagster as dg

from prox_resources.settings import ProxSettings

GPU_POOL = "gpu"

# Under the Kubernetes executor (PROX_EXECUTOR=k8s) each GPU step runs in its own pod that asks
# for one GPU on a GPU node; other executors ignore the tag. PROX_GPU_K8S_CONFIG (JSON, set in
# the Helm values) replaces the default, e.g. for other node labels or several GPUs.
DEFAULT_GPU_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def gpu_op_tags(settings: ProxSettings | None = None) -> dict:
    raw = (settings or ProxSettings.from_environment()).gpu_k8s_config
    return {"dagster-k8s/config": json.loads(raw) if raw else DEFAULT_GPU_K8S_CONFIG}


# Fixed when the definitions load: the asset decorators take them as arguments.
GPU_OP_TAGS = gpu_op_tags()

# What every model step declares, as one: `@dg.asset(..., **GPU_STEP)`.
GPU_STEP = {"pool": GPU_POOL, "op_tags": GPU_OP_TAGS}

# The pod of every other step under the Kubernetes executor. Without a tag of its own a step pod
# gets the code location's container context, whose `resources` the Helm chart copies from the
# code server's deployment (includeConfigInLaunchedRuns), overriding the run launcher's
# runK8sConfig: CPU steps (ingestion of large shards, selection, reports) would run on the small
# gRPC server's requests. PROX_CPU_K8S_CONFIG (JSON, set in the Helm values) replaces the default.
DEFAULT_CPU_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    },
}


def cpu_op_tags(settings: ProxSettings | None = None) -> dict:
    raw = (settings or ProxSettings.from_environment()).cpu_k8s_config
    return {"dagster-k8s/config": json.loads(raw) if raw else DEFAULT_CPU_K8S_CONFIG}


CPU_OP_TAGS = cpu_op_tags()

# What every step without a model declares: `@dg.asset(..., **CPU_STEP)`.
CPU_STEP = {"op_tags": CPU_OP_TAGS}


class DeviceSettings(dg.ConfigurableResource):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @classmethod
    def from_settings(cls, settings: ProxSettings) -> DeviceSettings:
        """PROX_DEVICE and PROX_DTYPE (default ``auto`` both): what runs and the CLI both use."""
        # pydantic validates the dtype against the literal
        return cls(device=settings.device, dtype=settings.dtype)  # type: ignore[arg-type]

    @classmethod
    def from_environment(cls) -> DeviceSettings:
        return cls.from_settings(ProxSettings.from_environment())

    def resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} requested but no CUDA device is visible")
        return self.device

    def resolve_dtype(self):
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.resolve_device().startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # CPU: fp32 weights; the engine and training run matmuls in bf16 autocast where the CPU has
        # bf16 units (core.precision), which keeps norms, softmax and the residual stream in fp32.
        return torch.float32
