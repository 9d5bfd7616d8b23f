"""A slow OpenAI-compatible server for fault tests: it waits, stalls, and records aborts.

Run as a model server (``engine: command``), it answers ``POST /v1/chat/completions`` and
``POST /v1/completions``, streamed or not, shaped by an optional ``stub`` object in the
request body (the SDK's ``extra_body``):

    {"tag": "a", "first_byte": 2.0, "chunks": 8, "gap": 0.05, "stall_after": 3, "stall": 10}

``fail``: answer at once with that status and ``error`` as the JSON body.
``tool``: ``{"name", "arguments"}``: answer with that tool call (streamed: its name, then
its arguments in two pieces), finish reason ``tool_calls``.
``first_byte``: seconds before the first chunk (or the whole answer); ``gap``: seconds
between chunks; after ``stall_after`` chunks it is silent for ``stall`` seconds. A streamed
answer's headers go out at once, as llama-server's do.

Every request leaves a record: its tag, whether it was streamed, how many chunks went out,
and how it ended, ``done`` or ``aborted`` (the client closed the connection: aiohttp
cancels the handler). ``GET /stub/log`` returns the records and the highest number of
requests it ever served at once; ``GET /health`` answers ok. With ``--record`` each record
also holds the body the request came with (its ``stub`` left out) under ``body``.

    python tests/slow_upstream.py --port 8089

For the tests of stopping: ``--ignore-sigterm`` makes it ignore SIGTERM (an engine that
hangs in its own shutdown), ``--child`` starts a child process, in the server's process
group as ollama's runners are, that ignores SIGTERM too (its pid is in ``GET /stub/log``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
from aiohttp import web

LOG: list[dict[str, Any]] = []
NOW = {"running": 0, "peak": 0}
CHILD: list[int] = []  # the pid of the child started with --child
REPLY: list[str] = []  # --reply: the answer's text, in the pieces the chunks carry
RECORD: list[bool] = []  # --record: keep each request's body in its record


def _chunk(i: int) -> bytes:
    text = REPLY[i] if REPLY else f"t{i} "
    event = {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "slow",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _last() -> bytes:
    event = {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "slow",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    spec: dict[str, Any] = body.get("stub") or {}
    record: dict[str, Any] = {
        "tag": spec.get("tag"),
        "stream": bool(body.get("stream")),
        "sent": 0,
        "outcome": "running",
        "began": time.time(),
        "cookie": request.headers.get("Cookie"),
    }
    if "Authorization" in request.headers:  # kept only when sent: records stay as they were
        record["authorization"] = request.headers["Authorization"]
    if RECORD:
        record["body"] = {k: v for k, v in body.items() if k != "stub"}
    LOG.append(record)
    NOW["running"] += 1
    NOW["peak"] = max(NOW["peak"], NOW["running"])
    chunks = len(REPLY) if REPLY else int(spec.get("chunks", 8))
    try:
        if "fail" in spec:  # an engine's own error answer, in an engine's own shape
            record["outcome"] = "done"
            return web.Response(
                status=int(spec["fail"]), body=orjson.dumps(spec.get("error", {})),
                content_type="application/json",
            )  # fmt: skip
        if "tool" in spec:
            record["outcome"] = "done"
            return await _tool_call(request, spec["tool"], record["stream"])
        if not record["stream"]:
            await asyncio.sleep(float(spec.get("first_byte", 0)))
            text = "".join(REPLY) if REPLY else " ".join(f"t{i}" for i in range(chunks))
            record["outcome"] = "done"
            answer = web.json_response(
                {
                    "id": "chatcmpl-slow",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "slow",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 4, "completion_tokens": chunks, "total_tokens": 0},
                }
            )
            # A session cookie, as some hosted APIs set: the gateway must not hand it on to
            # whoever sends the next request.
            answer.set_cookie("session", str(spec.get("tag")))
            return answer
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(float(spec.get("first_byte", 0)))
        for i in range(chunks):
            if i and i == spec.get("stall_after"):
                await asyncio.sleep(float(spec.get("stall", 3600)))
            await resp.write(_chunk(i))
            record["sent"] = i + 1
            await asyncio.sleep(float(spec.get("gap", 0)))
        await resp.write(_last())
        await resp.write_eof()
        record["outcome"] = "done"
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        record["outcome"] = "aborted"
        raise
    finally:
        record["ended"] = time.time()
        NOW["running"] -= 1


async def _tool_call(request: web.Request, tool: dict[str, Any], stream: bool) -> Any:
    name, arguments = str(tool["name"]), str(tool["arguments"])
    call = {"index": 0, "id": "call_stub", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    head = {"id": "chatcmpl-slow", "created": int(time.time()), "model": "slow"}
    if not stream:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return web.json_response({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})  # fmt: skip
    half = len(arguments) // 2
    deltas = [
        {"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for delta in deltas:
        chunk = {**head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    end = {**head, "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}  # fmt: skip
    await resp.write(b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def log(request: web.Request) -> web.Response:
    return web.json_response(
        {"requests": LOG, "peak": NOW["peak"], "running": NOW["running"], "child": CHILD}
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply", help="answer with this text, or @FILE's")
    parser.add_argument("--backlog", type=int, default=128, help="the listen queue's length")
    parser.add_argument("--ignore-sigterm", action="store_true", help="SIGTERM does nothing")
    parser.add_argument("--child", action="store_true", help="start a child that ignores it")
    parser.add_argument("--record", action="store_true", help="keep each request's body")
    args = parser.parse_args()
    if args.record:
        RECORD.append(True)
    if args.reply:  # "@PATH": the text of that file
        text = open(args.reply[1:]).read() if args.reply.startswith("@") else args.reply
        REPLY.extend(text[i : i + 8] for i in range(0, len(text), 8))
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child:
        ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        child = subprocess.Popen([sys.executable, "-c", ignore + "time.sleep(3600)"])
        CHILD.append(child.pid)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_get("/stub/log", log)
    app.router.add_get("/health", health)
    # handler_cancellation: a client that closes its connection cancels the handler,
    # which is how an abort shows up here.
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        backlog=args.backlog,
        print=None,
        handler_cancellation=True,
        handle_signals=not args.ignore_sigterm,  # aiohttp's own handler would stop on it
    )


if __name__ == "__main__":
    main()
