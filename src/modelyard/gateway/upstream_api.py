"""``/upstream/MODEL/PATH``: an engine's own HTTP surface through the gateway (admin scope).

llama-server's web UI, ``/slots``, ``/metrics`` and ``/props``; vLLM's ``/metrics``; any
path the engine serves, under its root (its OpenAI base without ``/v1``). The model starts
if it is not running, as a request would start it. A GET or HEAD (a page, a reading) holds
no slot; any other method is a request to the engine and holds one, like an API request.
Bytes pass as they come both ways, with the engine's status and headers (hop-by-hop ones
aside). The gateway's key and the console's cookie are not passed on: they are the
gateway's, not the engine's. A remote API (``engine: remote``) is not reached this way:
that server is not ours, and its key stays in the config.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelyard.errors import Code, Refusal, Refused
from modelyard.gateway.body import body_or_refusal
from modelyard.gateway.errors import error_response, openai_error
from modelyard.gateway.state import Gateway
from modelyard.instance import Lease

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
READS = {"GET", "HEAD", "OPTIONS"}
# Not passed on: hop-by-hop and length headers (each side sets its own), the gateway's
# credentials, and the encoding (the client decodes the engine's gzip: what comes back is
# plain, so its Content-Encoding would be a lie).
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}
_REQUEST_DROP = _HOP | {"host", "authorization", "x-api-key", "cookie", "accept-encoding"}
_ANSWER_DROP = _HOP | {"content-encoding", "date", "server", "set-cookie"}


def _which(gw: Gateway, rest: str) -> tuple[str, str] | None:
    """The model a path names, and the path under it: the longest leading run of segments
    that names a model (a model's name may hold ``/``)."""
    parts = rest.split("/")
    for i in range(len(parts), 0, -1):
        model = gw.config.resolve("/".join(parts[:i]))
        if model is not None:
            return model.name, "/".join(parts[i:])
    return None


async def passthrough(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    rest = request.path_params["rest"]
    found = _which(gw, rest)
    if found is None:
        known = ", ".join(gw.config.names())
        why = f"/upstream/{rest} names no model; known models: {known}"
        return openai_error(Refusal(Code.MODEL_NOT_FOUND, why))
    name, path = found
    if gw.config.models[name].engine == "remote":
        why = (
            f"{name} is a remote API (engine: remote): /upstream reaches the servers modelyard runs"
        )
        return error_response(400, why)
    if not path and not rest.endswith("/"):  # the engine's root: relative links resolve under it
        return RedirectResponse(f"/upstream/{rest}/", status_code=308)
    reads = request.method in READS
    body = b"" if reads else await body_or_refusal(request.receive, gw.config.access.body_timeout)
    if isinstance(body, Response):
        return body
    try:
        lease = await gw.scheduler.acquire(name, timeout=gw.config.wait_limit(name), admin=reads)
    except Refused as exc:
        return openai_error(Refusal(exc.code, exc.reason, status=exc.status))
    try:
        upstream = lease.instance.upstream
        if upstream is None:
            raise Refused(Code.MODEL_UNAVAILABLE, f"{name} stopped before the request was sent")
        url = upstream.base_url.removesuffix("/").removesuffix("/v1") + "/" + path
        if request.url.query:
            url += "?" + request.url.query
        headers = {k: v for k, v in request.headers.items() if k not in _REQUEST_DROP}
        answer = await gw.client.pooled.request(
            request.method,
            url,
            headers={**headers, **upstream.headers},
            data=body or None,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
    except Refused as exc:
        gw.scheduler.release(lease)
        return openai_error(Refusal(exc.code, exc.reason, status=exc.status))
    except (aiohttp.ClientError, TimeoutError) as exc:
        gw.scheduler.release(lease)
        why = f"{name}'s engine did not answer /{path}: {type(exc).__name__}: {exc}"
        return openai_error(Refusal(Code.UPSTREAM_ERROR, why, status=502))
    except BaseException:
        gw.scheduler.release(lease)
        raise
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in _ANSWER_DROP}
    if "location" in {k.lower() for k in kept}:  # the engine's redirect, kept under its prefix
        kept = {k: _under(v, name) if k.lower() == "location" else v for k, v in kept.items()}
    return _Relayed(answer, lease, gw, kept)


class _Relayed(StreamingResponse):
    """The engine's answer as it comes. Its place goes back and its connection is let go
    however the answer ends: done, the client gone (even before the first byte), the
    engine gone mid-way (the client then sees the stream end)."""

    def __init__(
        self, answer: aiohttp.ClientResponse, lease: Lease, gw: Gateway, headers: dict[str, str]
    ) -> None:
        super().__init__(self._chunks(answer), answer.status, headers)
        self.answer, self.lease, self.gw = answer, lease, gw

    @staticmethod
    async def _chunks(answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError):
            return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.answer.release()
            self.gw.scheduler.release(self.lease)


def _under(location: str, name: str) -> str:
    """An absolute path the engine redirects to, under ``/upstream/NAME``."""
    return f"/upstream/{name}{location}" if location.startswith("/") else location


routes = [Route("/upstream/{rest:path}", passthrough, methods=METHODS)]
