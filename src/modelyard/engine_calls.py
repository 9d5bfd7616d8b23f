"""The HTTP calls engines ask for (``engines.base.Http``), made with aiohttp.

Engines describe what they need (load a model into its daemon, probe a URL); this is the
one place those calls meet the network, so an engine's module stays free of I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp


class SessionHttp:
    """``Http`` over an aiohttp session the caller owns (and closes)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post_json(
        self, url: str, body: Mapping[str, Any], timeout: float | None
    ) -> tuple[int, str]:
        limit = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        try:
            async with self.session.post(url, json=body, timeout=limit) as resp:
                return resp.status, await resp.text()
        except aiohttp.ClientError as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> int:
        limit = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.get(url, headers=headers, timeout=limit) as resp:
                return resp.status
        except aiohttp.ClientError as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
