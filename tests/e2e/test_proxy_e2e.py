"""The proxy against a real llama-server: pooled connections the server closed are not 502s."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from modelyard.engines.base import Upstream
from modelyard.gateway.proxy import ProxyStream, Result, forward, new_client
from modelyard.gateway.timeouts import Limits
from tests.conftest import free_port, wait_healthy

pytestmark = pytest.mark.e2e


def test_streams_on_pooled_connections_llama_server_closed(gemma: Path, llama_server: str) -> None:
    """After a streamed answer llama-server may close the kept-alive connection without
    saying so; a request then sent on it cannot be written (`ClientOSError`). With one
    pooled session, 4 workers x 15 streamed requests saw 26 such failures of 60 before the
    proxy learnt to send those again on a new connection."""
    port = free_port()
    server = subprocess.Popen(
        [llama_server, "-m", str(gemma), "--port", str(port), "--parallel", "4", "-c", "2048"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, lambda: "llama-server")
        statuses = asyncio.run(_streams(port))
    finally:
        server.terminate()
        server.wait(30)
    assert statuses == [200] * 60, statuses


async def _streams(port: int) -> list[int]:
    client = new_client()
    upstream = Upstream(f"http://127.0.0.1:{port}/v1")
    body = b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"stream":true}'
    statuses: list[int] = []

    async def worker() -> None:
        for _ in range(15):
            ended: list[Result] = []
            answer = await forward(
                client,
                upstream,
                "/chat/completions",
                body,
                stream=True,
                asked_model="q",
                headers={},
                limits=Limits(10, 60, 60),
                done=ended.append,
            )
            assert isinstance(answer, ProxyStream)
            data = b"".join([chunk async for chunk in answer.chunks()])
            assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
            statuses.append(ended[0].status)

    try:
        await asyncio.gather(*(worker() for _ in range(4)))
    finally:
        await client.close()
    return statuses
