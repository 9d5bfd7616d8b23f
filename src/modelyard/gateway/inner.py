"""Requests the gateway makes of itself, in process: a persona's ``/listen`` and ``/speak``
and the Wyoming listener call the audio and chat endpoints through the app, under the
access guard, as the key that asked (or as the listener's configured key).

Each such request takes the one request path like any other (routing, the queue, the slots,
the GPU lease, the request log, the ``x-modelyard-*`` headers), with no socket and no
second HTTP parse. Its answer streams: :meth:`InnerResponse.chunks` yields the body as the
app writes it, and :meth:`InnerResponse.close` tells the app its client left (the upstream
request is closed, the places it held come back) if it was not read to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message

from modelyard.config import ApiKey

_END = "inner.end"  # put after the app returns or raises, whatever it sent


class InnerResponse:
    """The app's answer to an inner request: status and headers first, then the body."""

    def __init__(
        self, status: int, headers: dict[str, str], messages: asyncio.Queue[Message], task: Any
    ) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self._messages = messages
        self._task: asyncio.Task[None] = task
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as the app sends it."""
        while not self._done:
            message = await self._messages.get()
            if message["type"] == _END:
                self._done = True  # the app ended before its body did: what came is all
                break
            if message["type"] != "http.response.body":
                continue
            self._done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def json(self) -> Any:
        return orjson.loads(await self.read())

    async def close(self) -> None:
        """End the request: a body not read to its end is the client leaving."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class InnerClient:
    """Calls ``app`` (the gateway's routes, under the access guard) in this process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: ApiKey | None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> InnerResponse:
        """Send the request; returns once the app has started its answer."""
        raw_headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        for name, value in (headers or {}).items():
            raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": raw_headers,
            "client": ("inner", 0),
            "server": ("inner", 0),
            "state": {"api_key": key},
        }
        sent = False
        gone = asyncio.Event()
        messages: asyncio.Queue[Message] = asyncio.Queue()

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()  # the caller closed the response: its client left
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                gone.set()
                await messages.put({"type": _END})  # however it ended, a reader is let go

        task = asyncio.create_task(run(), name=f"inner {method} {path}")
        try:
            start = await messages.get()
        except asyncio.CancelledError:  # its caller left while it waited (queue, a start)
            task.cancel()
            raise
        if start["type"] != "http.response.start":  # the app ended without answering
            await task  # its exception, if it raised one
            raise RuntimeError(f"the gateway gave no answer to {method} {path}")
        found = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
        return InnerResponse(start["status"], found, messages, task)


def form_body(
    fields: dict[str, str], filename: str, data: bytes, content_type: str
) -> tuple[bytes, str]:
    """A multipart/form-data body of ``fields`` and one ``file``, and its Content-Type."""
    boundary = f"modelyard-{uuid.uuid4().hex}"
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    )
    safe = filename.replace('"', "").replace("\r", "").replace("\n", "") or "audio"
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
    head += f"Content-Type: {content_type}\r\n\r\n"
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
