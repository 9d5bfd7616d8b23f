"""``remote``: an OpenAI-compatible URL that is already running; nothing to start."""

from __future__ import annotations

from modelyard.config import RemoteModel
from modelyard.engines.base import Launch, Upstream


class RemoteEngine:
    kind = "remote"

    def __init__(self, model: RemoteModel) -> None:
        self.model = model

    def problem(self) -> str | None:
        return None

    def launch(self, port: int) -> Launch | None:
        return None

    def upstream(self, port: int) -> Upstream:
        headers = {"Authorization": f"Bearer {self.model.api_key}"} if self.model.api_key else {}
        return Upstream(self.model.url, self.model.upstream_model, headers)
