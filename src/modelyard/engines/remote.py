"""``remote``: an OpenAI-compatible URL that is already running; nothing to start."""

from __future__ import annotations

from modelyard.config import RemoteModel
from modelyard.engines.base import Engine, Upstream


class RemoteEngine(Engine):
    kind = "remote"

    def __init__(self, model: RemoteModel) -> None:
        super().__init__()
        self.model = model

    def upstream(self, port: int) -> Upstream:
        headers = {"Authorization": f"Bearer {self.model.api_key}"} if self.model.api_key else {}
        return Upstream(self.model.url, self.model.upstream_model, headers)
