"""The console's conversations over HTTP (docs/console.md, "Conversations API").

``/console/api/conversations``: list (search, pages), create, read, change, delete and
export one's conversations, add a message, cut the tail. Each API key sees only its own
(the key's name is the owner; "" when the gateway has no keys): another key's conversation
is not found, never forbidden. Chat answers are kept in conversations by
:mod:`modelyard.gateway.capture`; the store is :mod:`modelyard.conversations`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.config import ApiKey
from modelyard.conversations import (
    ID,
    PAGE_MAX,
    QUERY_MAX,
    ConversationPatch,
    Conversations,
    NewConversation,
    NewMessage,
    Rejected,
)
from modelyard.errors import Code, Refusal
from modelyard.gateway.body import CLOSE, body_or_refusal
from modelyard.gateway.errors import error_response, openai_error
from modelyard.gateway.state import Gateway

BASE = "/console/api/conversations"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _owner(request: Request) -> str:
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    return key.name if key is not None else ""


def _store(request: Request) -> Conversations:
    gw: Gateway = request.app.state.gateway
    return gw.conversations


def _target(request: Request) -> tuple[Conversations, str, str] | Response:
    """The store, the asking key's name and the conversation's id, or the 404 of an id
    that cannot be one."""
    id = request.path_params["id"]
    if not ID.fullmatch(id):
        return not_found(id)
    return _store(request), _owner(request), id


def not_found(id: str) -> Response:
    shown = id if ID.fullmatch(id) else "(not an id)"
    return openai_error(Refusal(Code.CONVERSATION_NOT_FOUND, f"no conversation {shown}"))


def _invalid(message: str, param: str | None) -> Response:
    return openai_error(Refusal(Code.INVALID_REQUEST, message, param=param))


async def _body(request: Request, model: type[M]) -> M | Response:
    """The body as ``model``, or the 4xx that says what is wrong and names the field."""
    gw: Gateway = request.app.state.gateway
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json":  # no form of another site's page can send this one
        why = "the body must be JSON: Content-Type: application/json"
        return error_response(415, why, headers=dict(CLOSE))  # its body is left unread
    raw = await body_or_refusal(request.receive, gw.config.access.body_timeout)
    if isinstance(raw, Response):
        return raw
    try:
        data = orjson.loads(raw or b"{}")  # strict UTF-8: no lone surrogates get further
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return error_response(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        return _invalid(f"`{field}`: {first['msg']}" if field else first["msg"], field)


async def _run(call: Awaitable[T]) -> T | Response:
    """What ``call`` returns, or the refusal it raised, rendered."""
    try:
        return await call
    except Rejected as exc:
        return openai_error(exc.refusal)


async def collection(request: Request) -> Response:
    """GET: a page of the key's conversations (``q``, ``limit``, ``before``); POST: a new one."""
    store, owner = _store(request), _owner(request)
    if request.method == "POST":
        new = await _body(request, NewConversation)
        if isinstance(new, Response):
            return new
        made = await _run(store.create(owner, new))
        return made if isinstance(made, Response) else JSONResponse(made, status_code=201)
    query = request.query_params
    q = query.get("q", "").strip()
    if len(q) > QUERY_MAX:
        return _invalid(f"`q` is over {QUERY_MAX} characters", "q")
    given = query.get("limit", "50")
    limit = int(given) if _whole(given) else 0
    if not 1 <= limit <= PAGE_MAX:
        return _invalid(f"`limit` must be a whole number from 1 to {PAGE_MAX}", "limit")
    try:
        before = _cursor(query.get("before"))
    except ValueError:
        return _invalid("`before` must be a page's `next` cursor (UPDATED,ID)", "before")
    page, after = await store.page(owner, q, limit, before)
    return JSONResponse({"data": page, "next": after, "search": "fts5" if store.fts else "like"})


def _whole(given: str) -> bool:
    """Whether ``given`` is a whole number of at most 10 ASCII digits (``int`` reads others:
    "٣", " 5", and raises on 5,000 digits)."""
    return given.isascii() and given.isdigit() and len(given) <= 10


def _cursor(given: str | None) -> tuple[float, str] | None:
    """``UPDATED,ID`` (or ``UPDATED`` alone) as a cursor, None if not given; ValueError if
    it is not one."""
    if given is None:
        return None
    at, _, id = given.partition(",")
    updated = float(at)
    if not math.isfinite(updated) or (id and not ID.fullmatch(id)):
        raise ValueError(given)
    return updated, id or "~"  # "~" sorts after every id: all of that instant are older


async def one(request: Request) -> Response:
    """GET: the conversation with its messages; PATCH: change it; DELETE: delete it."""
    target = _target(request)
    if isinstance(target, Response):
        return target
    store, owner, id = target
    if request.method == "GET":
        # ?after=SEQ: only the messages after it (a client that has the rest).
        after = request.query_params.get("after", "0")
        if not _whole(after):
            return _invalid(
                f"`after` must be a message's seq, a whole number; got {after[:20]!r}", "after"
            )
        found = await store.get(owner, id, int(after))
    elif request.method == "PATCH":
        patch = await _body(request, ConversationPatch)
        if isinstance(patch, Response):
            return patch
        changed = await _run(store.update(owner, id, patch))
        if isinstance(changed, Response):
            return changed
        found = changed
    else:
        found = {"id": id, "deleted": True} if await store.delete(owner, id) else None
    return not_found(id) if found is None else JSONResponse(found)


async def export(request: Request) -> Response:
    """The conversation as a file: ``?format=markdown`` (the default) or ``json``."""
    store, owner, id = _store(request), _owner(request), request.path_params["id"]
    kind = request.query_params.get("format", "markdown")
    if kind not in ("markdown", "md", "json"):
        return _invalid("`format` is `markdown` or `json`", "format")
    found = await store.get(owner, id) if ID.fullmatch(id) else None
    if found is None:
        return not_found(id)
    if kind == "json":
        data, media, name = to_json(found), "application/json", filename(found, "json")
    else:
        data, media, name = (
            to_markdown(found),
            "text/markdown; charset=utf-8",
            filename(found, "md"),
        )
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff",  # text of the users': never run as a page
    }
    return Response(data, media_type=media, headers=headers)


async def messages(request: Request) -> Response:
    """POST: add a user or system message; DELETE ``?from=SEQ``: delete it and all after."""
    target = _target(request)
    if isinstance(target, Response):
        return target
    store, owner, id = target
    if request.method == "POST":
        new = await _body(request, NewMessage)
        if isinstance(new, Response):
            return new
        added = await _run(store.append(owner, id, new))
        if isinstance(added, Response):
            return added
        return not_found(id) if added is None else JSONResponse(added, status_code=201)
    given = request.query_params.get("from", "")
    if not _whole(given) or not 1 <= int(given) <= 2**31:
        return _invalid("`from` must be a message's seq, a whole number from 1", "from")
    gone = await store.cut(owner, id, int(given))
    return not_found(id) if gone is None else JSONResponse({"id": id, "deleted": gone})


def filename(conversation: dict[str, Any], extension: str) -> str:
    """A file name safe in any header and file system: the title's plain characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", conversation["title"]).strip("-.")[:80]
    return f"{stem or 'conversation'}-{conversation['id']}.{extension}"


def to_json(conversation: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"format": "modelyard.conversation/1", **conversation}, option=orjson.OPT_INDENT_2
    )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def to_markdown(conversation: dict[str, Any]) -> bytes:
    """The conversation as a Markdown document: a heading per message, reasoning folded."""
    c = conversation
    out = [f"# {' '.join(c['title'].split()) or 'Untitled conversation'}", ""]
    if c["model"]:
        out.append(f"- Model: `{c['model']}`")
    out.append(f"- Created: {_when(c['created'])}; updated: {_when(c['updated'])}")
    if c["params"]:
        out.append("- Parameters: " + ", ".join(f"{k}={v}" for k, v in c["params"].items()))
    if c["system"]:
        out += ["", "## System prompt", "", c["system"]]
    for m in c["messages"]:
        heading = m["role"].capitalize()
        if m["role"] == "assistant" and m["model"]:
            heading += f" ({m['model']})"
        out += ["", f"## {heading}", ""]
        if m["reasoning"]:
            out += ["<details><summary>Reasoning</summary>", "", m["reasoning"], "", "</details>"]
            out.append("")
        out.append(m["content"])
        if m["status"] not in (None, "complete"):
            said = f": {m['error']}" if m["error"] else ""
            out += ["", f"*({m['status']}{said})*"]
    return ("\n".join(out) + "\n").encode()


routes = [
    Route(BASE, collection, methods=["GET", "POST"]),
    Route(BASE + "/{id}", one, methods=["GET", "PATCH", "DELETE"]),
    Route(BASE + "/{id}/export", export, methods=["GET"]),
    Route(BASE + "/{id}/messages", messages, methods=["POST", "DELETE"]),
]
