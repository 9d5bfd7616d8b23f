"""The gateway's side of a node (``RemoteNode``) against a real agent that breaks: an
answer that is not JSON (a crash's plain-text 500) is that call's error, quoted, and the
node stays reachable (it answered); only a node that does not answer is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.agent import create_agent_app
from modelyard.config import load_config
from modelyard.errors import StartError
from tests.conftest import free_port
from tests.e2e.test_logs_follow_e2e import _far_config, reached, serving

pytestmark = pytest.mark.e2e


def test_an_agent_s_plain_text_500_fails_the_call_not_the_node(tmp_path: Path) -> None:
    port = free_port()
    config = load_config(_far_config(tmp_path, port))
    app = create_agent_app(config, "far")

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug in the agent")  # Starlette answers 500, in plain text

    app.state.agent.node.start = broken

    async def scenario() -> None:
        node = await reached(config)
        try:
            assert node.reachable
            with pytest.raises(StartError) as failed:
                await node.start("far-slow", 30)
            assert str(failed.value) == (
                "node far's agent answered HTTP 500, not JSON: 'Internal Server Error'"
            )
            assert node.reachable and node.error is None  # it answered: not lost
            await node.refresh()
            assert node.reachable
        finally:
            await node.close()

    with serving(app, port):
        asyncio.run(scenario())
