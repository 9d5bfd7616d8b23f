"""``modelyard init``: a starter config from the GGUF files in a folder."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    name: str | None
    architecture: str | None
    context_length: int | None
    size_bytes: int


def read_gguf(path: Path) -> GgufInfo:
    """Name, architecture and trained context length from a GGUF file's metadata."""
    from gguf import GGUFReader  # imported here: it pulls in numpy

    reader = GGUFReader(str(path))

    def field(key: str) -> object | None:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    arch = arch if isinstance(arch, str) else None
    ctx = field(f"{arch}.context_length") if arch else None
    name = field("general.name")
    return GgufInfo(
        path,
        name if isinstance(name, str) else None,
        arch,
        int(ctx) if isinstance(ctx, int) else None,
        path.stat().st_size,
    )


def _model_name(info: GgufInfo, taken: set[str]) -> str:
    base = re.sub(r"-\d{5}-of-\d{5}$", "", info.path.stem).lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-.") or "model"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def starter_config(folder: Path, output: Path) -> tuple[str, int]:
    """The YAML text and the number of models; raises ValueError when nothing is found."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(
        p
        for p in folder.rglob("*.gguf")
        if "mmproj" not in p.name.lower()
        and not re.search(r"-0000[2-9]-of-|-000[1-9]\d-of-", p.name)
    )
    if not files:
        raise ValueError(f"no .gguf files in {folder}")
    models: dict[str, dict[str, object]] = {}
    for path in files:
        try:
            info = read_gguf(path)
        except Exception as exc:  # a damaged file is reported, the others still go in
            raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
        name = _model_name(info, set(models))
        weights = os.path.relpath(path.absolute(), output.absolute().parent)
        spec: dict[str, object] = {"engine": "llama.cpp", "weights": weights}
        if info.context_length:
            spec["context"] = min(info.context_length, 8192)
        spec.update({"ttl": "10m", "swap_group": "gpu"})
        if info.name:
            spec["description"] = (
                f"{info.name} ({info.architecture}, {info.size_bytes / 2**30:.1f} GiB)"
            )
        models[name] = spec
    header = (
        "# modelyard config written by `modelyard init`; every key: docs/config.md\n"
        "# All models share the swap group `gpu`: one runs at a time. Give a model its own\n"
        "# group (or none) to let it run beside the others.\n"
    )
    body = yaml.safe_dump(
        {"listen": "127.0.0.1:8000", "models": models}, sort_keys=False, allow_unicode=True
    )
    return header + body, len(models)
