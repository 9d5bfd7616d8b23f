"""Reading a GGUF file's metadata: what the memory estimate and ``modelyard init`` need."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=64)
def _read(path: Path, mtime: float) -> tuple[GgufFacts, str | None]:
    from gguf import GGUFReader  # imported here: it pulls in numpy

    reader = GGUFReader(str(path))

    def get(key: str) -> object | None:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    def integer(key: str) -> int | None:
        value = get(key)
        if isinstance(value, list):  # per-layer arrays: the largest is the safe figure
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) else None

    arch = get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    heads = integer(f"{arch}.attention.head_count")
    width = integer(f"{arch}.embedding_length")
    key_length = integer(f"{arch}.attention.key_length") or (
        width // heads if width and heads else None
    )
    name = get("general.name")
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
