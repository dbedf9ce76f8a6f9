"""Every setting the environment gives this platform, read in one place.

``ProxSettings.from_environment()`` is the one reading of the environment: the Dagster
definitions (``prox_assets.definitions``: resources, executor, backfill policies, step tags) and
the ``prox`` command line both build from it, and no other module reads a variable. Each field
names its variable, its default and what it means (``ProxSettings.documented()``; ``prox
settings`` prints them with their values). The path helpers below (``prox_home()``,
``store_url()``, ...) read it anew on each call, so a process (or a test) that changes the
environment sees the change.

S3 endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), never from a file of this project. This module
imports no Dagster (``prox audit`` starts without it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

REPO_ROOT = Path(__file__).resolve().parent.parent

# The model PROX_MODEL names by default: the real SmolLM2-135M-Instruct (prox_resources.models).
DEFAULT_MODEL = "smollm2-135m-instruct"

EngineBackend = Literal["transformers", "vllm", "openai"]
ENGINE_BACKENDS: tuple[str, ...] = ("transformers", "vllm", "openai")
Executor = Literal["", "k8s", "celery"]
EXECUTORS: tuple[str, ...] = ("", "k8s", "celery")
HtmlText = Literal["whole", "main_content"]
HTML_TEXTS: tuple[str, ...] = ("whole", "main_content")
DUCKLAKE_PREFIX = "ducklake:"

# The standard AWS variables the object store and a DuckLake catalog's S3 secret use.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def default_base_model(backend: str, model: str) -> str:
    """The base model when PROX_BASE_MODEL is unset: the engine's own model when the
    transformers backend runs it in this process, else DEFAULT_MODEL (a model vLLM or an HTTP
    server serves is a scorer sized for serving, not the small model refiners train from)."""
    return model if backend == "transformers" else DEFAULT_MODEL


class SettingError(ValueError):
    """A variable's value that no setting accepts; its message names the variable and what it
    may be (the ``prox`` command shows it as one line)."""


def _doc(env: str, default: str, help: str) -> dict[str, str]:
    """A ProxSettings field's metadata: its variable, its default as people read it, one line."""
    return {"env": env, "default": default, "help": help}


@dataclass(frozen=True)
class ProxSettings:
    """Every environment-driven setting, with its default (``from_environment`` reads them)."""

    # --- where things live
    home: Path = field(
        metadata=_doc(
            "PROX_HOME",
            "./.prox",
            "local working folder: catalog, Dagster instance, caches, samples",
        )
    )
    store: str = field(
        metadata=_doc(
            "PROX_STORE",
            "$PROX_HOME/store",
            "object-store root: a local path or s3://bucket/prefix",
        )
    )
    catalog: str = field(
        metadata=_doc(
            "PROX_CATALOG",
            "$PROX_HOME/catalog.duckdb",
            "the catalog: a DuckDB file, or ducklake:postgres:<libpq string or URI> shared by machines",
        )
    )
    catalog_data: str = field(
        metadata=_doc(
            "PROX_CATALOG_DATA",
            "$PROX_STORE/catalog/",
            "where a DuckLake catalog keeps its Parquet files (always ends in /)",
        )
    )
    downloads: Path = field(
        metadata=_doc(
            "PROX_DOWNLOADS", "$PROX_HOME/downloads", "source packages unpacked by deploy/setup.sh"
        )
    )
    # --- models
    engine_backend: EngineBackend = field(
        metadata=_doc(
            "PROX_ENGINE_BACKEND",
            "transformers",
            "the engine's backend: transformers, vllm or openai",
        )
    )
    model: str = field(
        metadata=_doc(
            "PROX_MODEL",
            DEFAULT_MODEL,
            "the model the engine serves for scoring and annotation: an alias or a local folder "
            "(openai: the served model's name)",
        )
    )
    base_model: str = field(
        metadata=_doc(
            "PROX_BASE_MODEL",
            "PROX_MODEL (transformers), else " + DEFAULT_MODEL,
            "the local model the SFT tokenizer, refiners, influence and checkpoints build on",
        )
    )
    openai_base_url: str | None = field(
        metadata=_doc(
            "PROX_OPENAI_BASE_URL", "", "the OpenAI-compatible server of the openai backend"
        )
    )
    openai_api_key: str | None = field(
        metadata=_doc("OPENAI_API_KEY", "", "the openai backend's bearer token (secret)"),
        repr=False,
    )
    device: str = field(
        metadata=_doc("PROX_DEVICE", "auto", "auto (CUDA if visible), cpu, cuda, cuda:N")
    )
    dtype: str = field(metadata=_doc("PROX_DTYPE", "auto", "auto, float32, bfloat16 or float16"))
    # --- runs
    partitions_per_run: int = field(
        metadata=_doc(
            "PROX_PARTITIONS_PER_RUN",
            "32",
            "partitions a backfill run of raw_corpus and of the model assets takes (at least 1)",
        )
    )
    executor: Executor = field(
        metadata=_doc(
            "PROX_EXECUTOR", "", "where steps run: '' Dagster's own, k8s a pod each, celery workers"
        )
    )
    # --- ingestion
    html_text: HtmlText = field(
        metadata=_doc(
            "PROX_HTML_TEXT",
            "whole",
            "HTML pages to text: whole (boilerplate kept, what the refiners learn to remove) or "
            "main_content (resiliparse's main-content extraction, as FineWeb does)",
        )
    )
    celery_broker: str | None = field(
        metadata=_doc(
            "PROX_CELERY_BROKER",
            "",
            "the Celery broker (secret; dagster-celery reads it where it is used)",
        ),
        repr=False,
    )
    celery_backend: str | None = field(
        metadata=_doc(
            "PROX_CELERY_BACKEND", "rpc://", "where Celery step results go back to the run"
        )
    )
    celery_visibility_timeout: int = field(
        metadata=_doc(
            "PROX_CELERY_VISIBILITY_TIMEOUT",
            "21600",
            "seconds before a Redis broker hands a lost worker's step out again",
        )
    )
    gpu_k8s_config: str | None = field(
        metadata=_doc(
            "PROX_GPU_K8S_CONFIG", "", "JSON: the pod of a GPU step under the k8s executor"
        )
    )
    cpu_k8s_config: str | None = field(
        metadata=_doc(
            "PROX_CPU_K8S_CONFIG", "", "JSON: the pod of every other step under the k8s executor"
        )
    )
    # --- the process
    dagster_home: str | None = field(
        metadata=_doc(
            "DAGSTER_HOME", "$PROX_HOME/dagster", "the Dagster instance (configure_environment)"
        )
    )
    aws: Mapping[str, str] = field(
        metadata=_doc(
            "AWS_*",
            "",
            "the standard AWS variables that are set: S3 endpoint, credentials, region (secret)",
        ),
        default_factory=dict,
        repr=False,
    )
    given: frozenset[str] = field(default_factory=frozenset, repr=False)
    """The variables the environment set (non-empty): a Dagster resource refers to those by name."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProxSettings:
        """The settings of ``environ`` (default: this process's environment); an empty variable
        counts as unset. Raises SettingError (a ValueError) for a value no setting accepts."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        home = Path(get("PROX_HOME") or ".prox").expanduser().absolute()
        store = get("PROX_STORE") or str(home / "store")
        data = get("PROX_CATALOG_DATA") or f"{store.rstrip('/')}/catalog"
        if "://" not in data:
            data = str(Path(data).expanduser().absolute())
        backend = get("PROX_ENGINE_BACKEND") or "transformers"
        if backend not in ENGINE_BACKENDS:
            raise SettingError(
                f"PROX_ENGINE_BACKEND={backend!r}: must be one of {', '.join(ENGINE_BACKENDS)}"
            )
        executor = get("PROX_EXECUTOR") or ""
        if executor not in EXECUTORS:  # a typo must not fall back to Dagster's own executor
            raise SettingError(
                f"PROX_EXECUTOR={executor!r}: must be unset (Dagster's own executor) or one of "
                + ", ".join(e for e in EXECUTORS if e)
            )
        html_text = get("PROX_HTML_TEXT") or "whole"
        if html_text not in HTML_TEXTS:
            raise SettingError(
                f"PROX_HTML_TEXT={html_text!r}: must be one of {', '.join(HTML_TEXTS)}"
            )
        model = get("PROX_MODEL") or DEFAULT_MODEL
        return cls(
            home=home,
            store=store,
            catalog=get("PROX_CATALOG") or str(home / "catalog.duckdb"),
            catalog_data=data.rstrip("/") + "/",
            downloads=Path(get("PROX_DOWNLOADS") or home / "downloads").expanduser().absolute(),
            engine_backend=cast(EngineBackend, backend),
            model=model,
            base_model=get("PROX_BASE_MODEL") or default_base_model(backend, model),
            openai_base_url=get("PROX_OPENAI_BASE_URL"),
            openai_api_key=get("OPENAI_API_KEY"),
            device=get("PROX_DEVICE") or "auto",
            dtype=get("PROX_DTYPE") or "auto",
            partitions_per_run=max(1, _integer(env, "PROX_PARTITIONS_PER_RUN", 32)),
            executor=cast(Executor, executor),
            html_text=cast(HtmlText, html_text),
            celery_broker=get("PROX_CELERY_BROKER"),
            celery_backend=get("PROX_CELERY_BACKEND"),
            celery_visibility_timeout=_integer(env, "PROX_CELERY_VISIBILITY_TIMEOUT", 21600),
            gpu_k8s_config=get("PROX_GPU_K8S_CONFIG"),
            cpu_k8s_config=get("PROX_CPU_K8S_CONFIG"),
            dagster_home=get("DAGSTER_HOME"),
            aws={k: v for k in AWS_VARIABLES if (v := env.get(k))},
            given=frozenset(k for k in _VARIABLES if get(k)),
        )

    def replace(self, **changes: Any) -> ProxSettings:
        """These settings with some changed (an override in code, e.g. a test's)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def documented(cls) -> list[tuple[str, str, str, str]]:
        """(field, variable, default, meaning) of every setting, in declaration order."""
        return [
            (f.name, f.metadata["env"], f.metadata["default"], f.metadata["help"])
            for f in dataclasses.fields(cls)
            if f.metadata
        ]

    def shown(self) -> list[tuple[str, str, str]]:
        """(variable, value, meaning) for people: secrets as ``(set)``, never their value."""
        rows = []
        for name, env, default, help in self.documented():
            value = getattr(self, name)
            if name == "aws":
                value = ", ".join(sorted(value)) or None
            elif value and "(secret" in help:
                value = "(set)"
            if value in (None, ""):
                value = f"{default} (default)" if default else ""
            rows.append((env, str(value), help))
        return rows


# Every variable from_environment reads (AWS_* apart), for ``given``.
_VARIABLES = (
    tuple(
        f.metadata["env"]
        for f in dataclasses.fields(ProxSettings)
        if f.metadata and f.metadata["env"] != "AWS_*"
    )
    + AWS_VARIABLES
)


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: not an integer") from None


def settings() -> ProxSettings:
    """The settings of this process's environment now (one reading)."""
    return ProxSettings.from_environment()


def prox_home() -> Path:
    return settings().home


def downloads_dir() -> Path:
    return settings().downloads


def store_url() -> str:
    return settings().store


def catalog_url() -> str:
    """$PROX_CATALOG as given (a file path or ``ducklake:postgres:...``), else the default file."""
    return settings().catalog


def is_ducklake(url: str) -> bool:
    return url.startswith(DUCKLAKE_PREFIX)


def catalog_path() -> Path:
    """The embedded catalog's file (PROX_CATALOG when it names a file)."""
    url = catalog_url()
    if is_ducklake(url):
        raise ValueError("PROX_CATALOG names a DuckLake catalog, not a file")
    return Path(url).expanduser().absolute()


def catalog_data_path() -> str:
    """Where a DuckLake catalog writes its Parquet files: $PROX_CATALOG_DATA, else ``catalog/``
    under the store (an s3:// prefix or a local folder), always ending in ``/``."""
    return settings().catalog_data


def configure_environment() -> None:
    """Pin PROX_HOME to an absolute path and give Dagster an instance under it.

    Unless DAGSTER_HOME is set, it becomes $PROX_HOME/dagster, holding a copy of this
    repository's dagster.yaml (refreshed when the original changes), so run history lives next
    to the data it describes. (Writes the environment: Dagster and child processes read it.)
    """
    current = settings()
    home = current.home
    os.environ["PROX_HOME"] = str(home)
    if current.dagster_home:
        return
    instance_dir = home / "dagster"
    instance_dir.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = instance_dir / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        # a temporary name of its own: several commands started together each write theirs
        fd, tmp = tempfile.mkstemp(prefix=".dagster.yaml.", dir=instance_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(source.read_bytes())
        os.replace(tmp, target)
    os.environ["DAGSTER_HOME"] = str(instance_dir)


@contextmanager
def file_lock(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` between processes of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} held by another process for over {timeout_s:.0f}s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def owned_tempdir(prefix: str) -> Iterator[str]:
    """A temporary folder ``$TMPDIR/<prefix><pid>-<random>``, deleted on exit.

    A process killed with SIGKILL cannot delete its folder, so each call first deletes the folders
    of ``prefix`` whose process is gone: a killed run's leftovers last until the next run."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def lock_path(name: str) -> Path:
    """``$PROX_HOME/locks/<name>.lock``: locks between the commands of this machine."""
    return prox_home() / "locks" / f"{name}.lock"
