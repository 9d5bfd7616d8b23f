"""``modelyard init``: a starter config from the GGUF files in a folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from modelyard.gguf_file import read_facts, read_name


def _model_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"-\d{5}-of-\d{5}$", "", path.stem).lower()
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
            facts, title = read_facts(path), read_name(path)
        except Exception as exc:  # the gguf reader raises several kinds on a damaged file
            raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
        name = _model_name(path, set(models))
        weights = os.path.relpath(path.absolute(), output.absolute().parent)
        spec: dict[str, object] = {"engine": "llama.cpp", "weights": weights}
        if facts.context_length:
            spec["context"] = min(facts.context_length, 8192)
        spec.update({"ttl": "10m", "swap_group": "gpu"})
        if facts.moe:
            spec["moe"] = True
        if title:
            size = facts.size_bytes / 2**30
            spec["description"] = f"{title} ({facts.architecture}, {size:.1f} GiB)"
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
