"""The Ollama front-end, the models: ``/api/tags``, ``/api/ps``, ``/api/show``,
``/api/version``, ``/api/pull``, ``HEAD /`` (``GET /`` stays the console's page, a 200);
and a clear 4xx for what a gateway over a config does not do (``create``, ``push``,
``copy``, ``delete``).

What a client reads of a model comes from the config and the GGUF file's header: its
size, family (``general.architecture``), parameter size (``general.size_label``),
quantization (``general.file_type``), the context window one request gets (not the trained
one: the gateway's own figure), and its capabilities. ``/api/ps``'s ``expires_at`` is when
the idle instance stops (its ``ttl`` or a client's ``keep_alive``); ``size_vram`` its
memory need on GPUs.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard.config import Model
from modelyard.gateway import session
from modelyard.gateway.state import Gateway
from modelyard.gguf_file import read_metadata
from modelyard.lifecycle import State
from modelyard.ollama_body import model_entry, ps_entry, show_body, tag_name, untag
from modelyard.views import model_view

VERSION = "0.12.6"  # the Ollama API version answered: clients check for a recent one
# GGUF's general.file_type numbers (llama.cpp's LLAMA_FTYPE) as Ollama names them.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}
_UNSUPPORTED = ("create", "push", "copy", "delete", "blobs")


@functools.lru_cache(maxsize=64)
def _header(path: Path, mtime: float) -> dict[str, Any]:
    meta = read_metadata(path)
    kept = {k: v for k, v in meta.items() if not isinstance(v, list)}  # not the vocabulary
    return kept | {"fim": "tokenizer.ggml.fim_pre_token_id" in meta}


def _facts(model: Model) -> dict[str, Any]:
    """What Ollama clients read of ``model``, from its config and its GGUF header."""
    meta: dict[str, Any] = {}
    size, modified = 0, 0.0
    if model.gguf is not None and model.gguf.exists():
        stat = model.gguf.stat()
        size, modified = stat.st_size, stat.st_mtime
        try:
            meta = _header(model.gguf, stat.st_mtime)
        except (OSError, ValueError):
            meta = {}
    template = str(meta.get("tokenizer.chat_template") or "")
    ends = model.endpoints
    capabilities = [
        *(["completion"] if {"chat", "completions"} & ends else []),
        *(["embedding"] if "embeddings" in ends else []),
        *(["tools"] if "chat" in ends and "tool" in template else []),
        *(["insert"] if meta.get("fim") and model.engine == "llama.cpp" else []),
        *(["vision"] if "--mmproj" in [str(a) for a in getattr(model, "args", [])] else []),
        *(["thinking"] if model.harmony or "think" in template else []),
    ]
    file_type = meta.get("general.file_type")
    details = {  # as the listing helpers name them
        "family": meta.get("general.architecture") or model.engine,
        "parameter_size": meta.get("general.size_label"),
        "quantization": _FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
        "context_length": model.window,
    }
    return {
        "size": size or model.memory or 0,
        "modified": modified,
        "details": details,
        "capabilities": capabilities,
        "template": template,
    }


async def tags(request: Request) -> Response:
    """``GET /api/tags``: every model of the config that generates or embeds."""
    gw: Gateway = request.app.state.gateway
    out = []
    for name, model in gw.config.models.items():
        if not {"chat", "completions", "embeddings"} & model.endpoints:
            continue  # a voice or ears: not an Ollama model
        f = _facts(model)
        out.append(model_entry(name, f["size"], f["modified"] or gw.started, **f["details"]))
    return JSONResponse({"models": out})


async def ps(request: Request) -> Response:
    """``GET /api/ps``: the models running now, with when each stops if left idle."""
    gw: Gateway = request.app.state.gateway
    out = []
    for name, inst in gw.scheduler.instances.items():
        model = gw.config.models.get(name)
        if model is None or inst.state not in (State.READY, State.DRAINING):
            continue
        view = model_view(gw.scheduler, name)
        left = view.get("ttl_left_s")
        expires = time.time() + left if left is not None else math.inf
        need = view.get("need") or {}
        f = _facts(model)
        vram = int(sum((need.get("per_gpu") or {}).values()))  # 0 on the CPU
        out.append(ps_entry(name, f["size"], vram, expires, **f["details"]))
    return JSONResponse({"models": out})


async def show(request: Request) -> Response:
    """``POST /api/show`` ``{"model"}``: details, the context window, capabilities."""
    gw: Gateway = request.app.state.gateway
    try:
        body = orjson.loads(await request.body())
        written = str(body.get("model") or body.get("name") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return JSONResponse({"error": "the body must be a JSON object with `model`"}, 400)
    name = untag(written, list(gw.config.models))
    if name is None:
        return JSONResponse({"error": f"model '{written}' not found"}, status_code=404)
    f = _facts(gw.config.models[name])
    return JSONResponse(
        show_body(
            name,
            capabilities=f["capabilities"],
            modified_at=f["modified"] or gw.started,
            template=f["template"],
            **f["details"],
        )
    )


async def version(request: Request) -> Response:
    return JSONResponse({"version": VERSION})


async def pull(request: Request) -> Response:
    """``POST /api/pull``: nothing is downloaded; a model the config has is "pulled"."""
    gw: Gateway = request.app.state.gateway
    try:
        body = orjson.loads(await request.body())
        written = str(body.get("model") or body.get("name") or "")
        stream = body.get("stream", True) is not False
    except (orjson.JSONDecodeError, AttributeError):
        return JSONResponse({"error": "the body must be a JSON object with `model`"}, 400)
    known = [*gw.config.names(), *gw.config.tiers]
    if untag(written, known) is None:
        has = ", ".join(map(tag_name, known))
        why = (
            f"model '{written}' is not in this gateway's config, and modelyard pulls "
            f"nothing: add it under models: (it has: {has})"
        )
        return JSONResponse({"error": why}, status_code=404)
    lines = [{"status": "pulling manifest"}, {"status": "success"}]
    if not stream:
        return JSONResponse(lines[-1])
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    return StreamingResponse(iter([data]), media_type="application/x-ndjson")


async def unsupported(request: Request) -> Response:
    what = request.url.path
    why = (
        f"{request.method} {what} is not supported: modelyard serves the models its "
        "config lists (models: in its YAML file); it creates, copies, pushes and deletes none"
    )
    return JSONResponse({"error": why}, status_code=400 if request.method == "POST" else 405)


async def root(request: Request) -> Response:
    """``GET /`` is the console's page, a 200 as Ollama clients that probe the root want
    (its body is not Ollama's "Ollama is running"); ``HEAD /`` answers 200 alone."""
    if request.method == "HEAD":
        return PlainTextResponse("")
    return await session.index(request)


routes = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/pull", pull, methods=["POST"]),
    *(
        Route(f"/api/{what}", unsupported, methods=["POST", "DELETE", "HEAD", "GET"])
        for what in _UNSUPPORTED
    ),
]
