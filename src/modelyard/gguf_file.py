"""Reading a GGUF file's metadata: what the memory estimate and ``modelyard init`` need."""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from modelyard.estimate import GgufFacts

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def shards(path: Path) -> list[Path]:
    """All files of a split model (``-00001-of-00003.gguf``), or just ``path``."""
    match = _SHARD.search(path.name)
    if not match:
        return [path]
    count = int(match.group(2))
    stem = path.name[: match.start()]
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


# GGUF value types: struct format of the fixed-size ones; 8 is a string, 9 an array.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
MAX_ARRAY_KEPT = 1024  # longer arrays (the tokenizer's) are skipped, not kept


def read_metadata(path: Path) -> dict[str, Any]:
    """The key/value header of a GGUF file (v2 or v3), without its tensors.

    The ``gguf`` package builds every field eagerly, the tokenizer's 262,000 strings
    included: 10-30 s per file here. This reads what is needed and skips the rest.
    """
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (2 or later)")
        _tensors, count = struct.unpack("<QQ", f.read(16))
        out: dict[str, Any] = {}
        for _ in range(count):
            key = _string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            out[key] = _value(f, kind)
        return out


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _FIXED:
        fmt = "<" + _FIXED[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, n = struct.unpack("<IQ", f.read(12))
    if item in _FIXED:
        size = struct.calcsize("<" + _FIXED[item])
        if n > MAX_ARRAY_KEPT:
            f.seek(n * size, 1)
            return None
        return list(struct.unpack(f"<{n}{_FIXED[item]}", f.read(n * size)))
    values = [_value(f, item) for _ in range(n)] if n <= MAX_ARRAY_KEPT else None
    if values is None:
        for _ in range(n):  # strings must be walked one by one to be skipped
            if item == _STRING:
                (length,) = struct.unpack("<Q", f.read(8))
                f.seek(length, 1)
            else:
                _value(f, item)
    return values


@lru_cache(maxsize=64)
def _read(path: Path, mtime: float) -> tuple[GgufFacts, str | None]:
    meta = read_metadata(path)

    def integer(key: str) -> int | None:
        value = meta.get(key)
        if isinstance(value, list):  # per-layer arrays: the largest is the safe figure
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    arch = meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    heads = integer(f"{arch}.attention.head_count")
    width = integer(f"{arch}.embedding_length")
    key_length = integer(f"{arch}.attention.key_length") or (
        width // heads if width and heads else None
    )
    name = meta.get("general.name")
    facts = GgufFacts(
        size_bytes=sum(p.stat().st_size for p in shards(path) if p.exists()),
        architecture=arch or None,
        context_length=integer(f"{arch}.context_length"),
        block_count=integer(f"{arch}.block_count"),
        head_count_kv=integer(f"{arch}.attention.head_count_kv") or heads,
        key_length=key_length,
        value_length=integer(f"{arch}.attention.value_length") or key_length,
        expert_count=integer(f"{arch}.expert_count") or 0,
    )
    return facts, name if isinstance(name, str) else None


def read_facts(path: Path) -> GgufFacts:
    """The estimate's inputs from ``path``; raises OSError or ValueError for a bad file."""
    return _read(path, path.stat().st_mtime)[0]


def read_name(path: Path) -> str | None:
    """``general.name`` from the metadata, if any."""
    return _read(path, path.stat().st_mtime)[1]
