"""``remote``: an OpenAI-compatible URL that is already running; nothing to start."""

from __future__ import annotations

import aiohttp

from modelyard.config import RemoteModel
from modelyard.engines.base import Engine, Upstream

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3)


class RemoteEngine(Engine):
    kind = "remote"

    def __init__(self, model: RemoteModel) -> None:
        super().__init__()
        self.model = model

    def upstream(self, port: int) -> Upstream:
        headers = {"Authorization": f"Bearer {self.model.api_key}"} if self.model.api_key else {}
        return Upstream(self.model.url, self.model.upstream_model, headers)

    async def down(self, session: aiohttp.ClientSession) -> str | None:
        """Why the URL does not serve now (``GET /models`` fails or answers 5xx), or None."""
        url = self.model.url
        headers = self.upstream(0).headers
        try:
            async with session.get(url + "/models", headers=headers, timeout=PROBE_TIMEOUT) as r:
                return f"{url} answers {r.status}" if r.status >= 500 else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{url} does not answer ({type(exc).__name__})"
