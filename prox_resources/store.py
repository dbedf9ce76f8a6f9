"""The object store: one root (a local folder or s3://bucket/prefix) reached through fsspec.

Every write is atomic. Bytes go to a local temporary file first; a local store then renames it
into place (``os.replace``), and S3 receives it with one PUT or a multipart upload, both of which
make the object visible only once complete. A killed writer therefore leaves at most a stray
``.tmp-*`` file, never a half-written object under its real name. ``create_file`` writes a key
only if it is free (uploads to ``incoming/`` never overwrite one another). A local store never
follows a symbolic link under its root: reading one is refused.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import dagster as dg
import fsspec
import polars as pl
from pydantic import PrivateAttr

from prox_resources.settings import ProxSettings, store_url

TMP_PREFIX = ".tmp-"


class ObjectStore(dg.ConfigurableResource):
    """Bulk data (Parquet, checkpoints) under one root URL, local or S3."""

    url: str | None = None  # default: $PROX_STORE or $PROX_HOME/store
    endpoint_url: str | None = None  # S3-compatible endpoint; default: AWS_ENDPOINT_URL
    access_key_id: str | None = None
    secret_access_key: str | None = None

    _fs_cache: dict = PrivateAttr(default_factory=dict)

    @property
    def root(self) -> str:
        return (self.url or store_url()).rstrip("/")

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    @property
    def _fs_and_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if "fs" not in self._fs_cache:
            self._fs_cache["fs"] = self._connect()
        return self._fs_cache["fs"]

    def _connect(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self.is_local:
            path = self.root.removeprefix("file://")
            os.makedirs(path, exist_ok=True)
            return fsspec.filesystem("file"), os.path.abspath(path)
        protocol, _, rest = self.root.partition("://")
        options: dict = {}
        if protocol == "s3":
            endpoint = self.endpoint_url or ProxSettings.from_environment().aws.get(
                "AWS_ENDPOINT_URL"
            )
            if endpoint:
                options["endpoint_url"] = endpoint
            if self.access_key_id:
                options["key"] = self.access_key_id
            if self.secret_access_key:
                options["secret"] = self.secret_access_key
            options["use_listings_cache"] = False
        return fsspec.filesystem(protocol, **options), rest

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_root[0]

    def path(self, key: str) -> str:
        """The filesystem path of ``key`` (no protocol), for fsspec calls."""
        return f"{self._fs_and_root[1]}/{key.lstrip('/')}"

    def uri(self, key: str) -> str:
        """A full URI for ``key``, for people and metadata."""
        return f"{self.root}/{key.lstrip('/')}"

    # --- reading -------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def list(self, prefix: str, temporary: bool = False) -> list[str]:
        """Keys of finished objects under ``prefix``, sorted; with ``temporary``, the ``.tmp-``
        files of writes in progress or killed too (for a clean-up that knows none is in
        progress)."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        root = self._fs_and_root[1]
        keys = []
        for p in self.fs.find(base):
            name = p.rsplit("/", 1)[-1]
            if temporary or not name.startswith(TMP_PREFIX):
                keys.append(p[len(root) + 1 :] if p.startswith(root) else p)
        return sorted(keys)

    def is_link(self, key: str) -> bool:
        """Whether ``key``, or a folder between the root and it, is a symbolic link (local stores).

        The store never follows links: a link under it could point anywhere on the machine.
        """
        if not self.is_local:
            return False
        path = self._fs_and_root[1]
        for part in key.strip("/").split("/"):
            path = os.path.join(path, part)
            if os.path.islink(path):
                return True
        return False

    def open_read(self, key: str) -> IO[bytes]:
        if self.is_local:
            if self.is_link(key):
                raise PermissionError(
                    f"{self.uri(key)} is a symbolic link; the store does not follow links"
                )
            # O_NOFOLLOW: a link swapped in after the check is refused too
            return open(
                self.path(key), "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)
            )
        return self.fs.open(self.path(key), "rb")

    def read_bytes(self, key: str) -> bytes:
        if self.is_local:
            with self.open_read(key) as f:
                return f.read()
        return self.fs.cat_file(self.path(key))

    def read_parquet(self, key: str) -> pl.DataFrame:
        with self.open_read(key) as f:
            return pl.read_parquet(f)

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    # --- writing (atomic) ----------------------------------------------------------------
    @contextmanager
    def _staged(self, key: str, commit) -> Iterator[IO[bytes]]:
        """Bytes written to a local temporary file, then ``commit(tmp, target)``; the temporary
        file never outlives the call (locally it sits beside the target, so a rename is atomic)."""
        target = self.path(key)
        if self.is_local:
            directory = os.path.dirname(target)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        else:
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            commit(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Write ``key`` atomically: readers see the old object or the whole new one."""
        with self._staged(key, os.replace if self.is_local else self.fs.put_file) as f:
            yield f

    def write_bytes(self, key: str, data: bytes) -> str:
        with self.open_write(key) as f:
            f.write(data)
        return self.uri(key)

    def write_parquet(self, key: str, df: pl.DataFrame) -> str:
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        return self.write_bytes(key, buf.getvalue())

    def put_file(self, local_path: str, key: str) -> str:
        with open(local_path, "rb") as src, self.open_write(key) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        return self.uri(key)

    def create_file(self, src: IO[bytes], key: str) -> str:
        """Write ``key`` from ``src`` only if no object has that key yet; FileExistsError if one has.

        Local: the bytes go to a temporary file that is then hard-linked to the key, and ``os.link``
        refuses an existing name atomically (between processes and machines sharing the folder).
        S3: a PUT with ``If-None-Match: *``, which AWS S3 (and servers that implement conditional
        writes) refuse when the key exists; servers that ignore the header make this a
        check-then-put, exclusive only among callers that hold one lock (``prox ingest`` holds
        ``$PROX_HOME/locks/incoming.lock`` around it), not between machines.
        """
        if not self.is_local and self.fs.exists(self.path(key)):
            raise FileExistsError(f"{self.uri(key)} exists")

        def create(tmp: str, target: str) -> None:
            if self.is_local:
                os.link(tmp, target)  # FileExistsError if the key exists
                return
            try:
                self.fs.put_file(tmp, target, mode="create")
            except OSError as exc:  # 412 Precondition Failed: someone else created it first
                if isinstance(exc, FileExistsError) or any(
                    w in str(exc).lower() for w in ("precondition", "pre-condition")
                ):
                    raise FileExistsError(f"{self.uri(key)} exists") from exc
                raise

        with self._staged(key, create) as f:
            while chunk := src.read(1 << 20):
                f.write(chunk)
        return self.uri(key)

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm(self.path(key))
