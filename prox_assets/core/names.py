"""Names that become partition keys and store paths: one rule for all of them.

Shards, targets and refiner versions end up as Dagster partition keys (joined as
``<refiner_version>|<shard>`` and ``<target>|<variant>``) and as folder or file names in the
object store (``raw/<shard>.parquet``, ``targets/<target>/``, ``refined/<version>/<shard>.parquet``).
So a name is 1 to 64 characters of ``[a-z0-9_-]``, starting with a letter or digit: no ``/``,
``..``, ``|``, spaces, dots or upper case (a case-insensitive file system would merge them), and
short enough that every path built from it stays far below the file-name limit (255 bytes).

``shard_name`` turns any file name into such a name, injectively: a name that is already a valid
name plus a supported suffix in lower case keeps its stem (``pydocs-00.warc.gz`` -> ``pydocs-00``);
any other name becomes a readable slug, a double hyphen and 8 hex digits of the SHA-256 of the
original file name (``AGAIN.jsonl`` -> ``again--<hash>``, ``日本.jsonl`` -> ``shard--<hash>``).
Untouched names never contain ``--`` (a stem with ``--`` counts as changed), so the two kinds
cannot meet; two changed names meet only if both slug and hash agree. What remains -- one stem
with two suffixes (``a.jsonl`` beside ``a.parquet``) -- is a collision the callers refuse.
"""

from __future__ import annotations

import hashlib
import re

from prox_assets.core.ingest import SUPPORTED_SUFFIXES
from prox_assets.core.unicode import is_valid_unicode

MAX_NAME_CHARS = 64
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
SLUG_MAX_CHARS = 40  # the slug of a changed name; + "--" + 8 hex digits stays under MAX_NAME_CHARS
HASH_CHARS = 8
EMPTY_SLUG = "shard"
RESERVED_PREFIX = ".tmp-"  # the store's temporary files: never listed, so never a shard source


class InvalidName(ValueError):
    """A name that cannot be a partition key or a path segment."""


def validate_name(name: str, kind: str = "name") -> str:
    """``name`` unchanged if it may become a partition key and a path segment, else InvalidName."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"{kind} must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(
            f"{kind} {name[:20]!r}... is {len(name)} characters; at most {MAX_NAME_CHARS}"
        )
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"{kind} {name!r} is not allowed: use lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit (no '/', '.', '|', spaces)"
        )
    return name


def is_valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidName:
        return False
    return True


def split_suffix(filename: str) -> tuple[str, str]:
    """(stem, suffix) of a file's base name; the suffix is the supported one, as written."""
    base = filename.rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return base[: -len(suffix)], base[-len(suffix) :]
    return base, ""


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # a POSIX file name may be any bytes


def shard_name(filename: str) -> str:
    """The shard (partition key) of a file: injective on base names up to the suffix, stable."""
    base = filename.rsplit("/", 1)[-1]
    stem, suffix = split_suffix(base)
    if suffix == suffix.lower() and "--" not in stem and is_valid_name(stem):
        return stem
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9_-]+", "-", stem.lower()))
    slug = slug[:SLUG_MAX_CHARS].strip("-_") or EMPTY_SLUG
    if not slug[0].isalnum():
        slug = EMPTY_SLUG
    digest = hashlib.sha256(_utf8(base)).hexdigest()[:HASH_CHARS]
    return f"{slug}--{digest}"


def check_input_file_name(filename: str) -> None:
    """Refuse a file name that cannot be an incoming/ object (InvalidName), before any upload."""
    base = filename.rsplit("/", 1)[-1]
    if base.startswith(RESERVED_PREFIX):
        raise InvalidName(
            f"{base!r}: names starting with {RESERVED_PREFIX!r} are the store's temporary files"
        )
    if len(_utf8(base)) > 255:  # NAME_MAX: no local file system could hold it
        raise InvalidName(f"{base[:40]!r}...: file name of {len(_utf8(base))} bytes; at most 255")
    if any(c in base for c in "\0\n\r"):
        raise InvalidName(f"{base!r}: control characters in a file name")
    if not is_valid_unicode(base):  # its bytes, decoded with surrogateescape
        # the catalog, Dagster's run records and an S3 key are all text: such a shard would
        # register, then fail on every run
        raise InvalidName(f"{base!r}: the file name is not valid UTF-8; rename the file")
