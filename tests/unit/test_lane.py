"""The OpenAI lane in front of a Starlette app: what it serves itself, what it passes on."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.gateway.lane import OpenAILane


async def chat(request: Request) -> Response:
    body = await request.json()
    if body.get("fail"):
        raise RuntimeError("boom")
    return JSONResponse({"via": "lane" if "router" not in request.scope else "starlette",
                         "app": request.app.state.name, "echo": body})  # fmt: skip


async def other(request: Request) -> Response:
    return JSONResponse({"via": "starlette"})


def make() -> OpenAILane:
    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", other)]
    )
    app.state.name = "the-app"
    return OpenAILane(app, {"/v1/chat/completions": chat})


def call(lane: OpenAILane, method: str, path: str, root: str = "", **kw: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=lane, root_path=root)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)  # type: ignore[arg-type]

    return asyncio.run(go())


def test_the_lane_serves_its_posts_and_passes_the_rest_on() -> None:
    lane = make()
    r = call(lane, "POST", "/v1/chat/completions", json={"x": 1})
    assert r.status_code == 200
    assert r.json() == {"via": "lane", "app": "the-app", "echo": {"x": 1}}
    # behind a prefix (root_path), the same
    r = call(lane, "POST", "/api/v1/chat/completions", root="/api", json={"x": 2})
    assert r.json()["via"] == "lane"
    # another method on the path, another path: Starlette's routing, 405 and 200
    assert call(lane, "GET", "/v1/chat/completions").status_code == 405
    assert call(lane, "GET", "/health").json() == {"via": "starlette"}
    assert call(lane, "POST", "/v1/unknown").status_code == 404


def test_an_unexpected_error_is_a_500_that_says_so() -> None:
    r = call(make(), "POST", "/v1/chat/completions", json={"fail": True})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "the gateway failed on this request; its log says why"
