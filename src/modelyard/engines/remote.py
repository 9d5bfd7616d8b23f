"""``remote``: an OpenAI-compatible URL that is already running; nothing to start."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from modelyard.engines.base import Engine, Http, Upstream
from modelyard.model_spec import ModelBase

PROBE_TIMEOUT = 3.0  # seconds a URL has to answer the probe


class RemoteModel(ModelBase):
    """An OpenAI-compatible URL that is already running (a cloud API, a cluster)."""

    engine: Literal["remote"]
    url: str = Field(description="Base URL up to and including /v1.")
    api_key: str | None = None
    upstream_model: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL, e.g. https://api.example.com/v1")
        return value.rstrip("/")


class RemoteEngine(Engine[RemoteModel]):
    kind = "remote"
    config = RemoteModel
    probes_url = True

    def upstream(self, port: int) -> Upstream:
        headers = {"Authorization": f"Bearer {self.model.api_key}"} if self.model.api_key else {}
        return Upstream(self.model.url, self.model.upstream_model, headers)

    async def down(self, http: Http) -> str | None:
        """Why the URL does not serve now (``GET /models`` fails or answers 5xx), or None."""
        url = self.model.url
        try:
            status = await http.get(url + "/models", self.upstream(0).headers, PROBE_TIMEOUT)
        except OSError as exc:
            return f"{url} does not answer ({type(exc).__name__})"
        return f"{url} answers {status}" if status >= 500 else None


ENGINE = RemoteEngine
