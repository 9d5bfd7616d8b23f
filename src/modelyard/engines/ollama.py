"""``ollama``: one ``ollama serve`` daemon per model, its model loaded once it is up.

The daemon is started on a free port with the model's GPUs; once ``/`` answers, an empty
``/api/generate`` loads the model (so readiness means loaded, not just listening), and
before the daemon is stopped the same call with ``keep_alive: 0`` unloads it.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from modelyard.config import OllamaModel
from modelyard.engines.base import (
    Engine,
    Launch,
    StartError,
    Upstream,
    gpu_env,
    missing_program,
)

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def keep_alive_value(text: str) -> int | float | str:
    """Ollama's API reads a JSON number as seconds and a string as a Go duration ("10m");
    a bare number sent as a string ("-1") is refused, so numbers go as numbers."""
    if _NUMBER.match(text.strip()):
        number = float(text)
        return int(number) if number.is_integer() else number
    return text


class OllamaEngine(Engine):
    kind = "ollama"

    def __init__(self, model: OllamaModel, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.model = model

    def problem(self) -> str | None:
        return missing_program(self.model.binary, "install Ollama, or set `binary`")

    def launch(self, port: int) -> Launch:
        m = self.model
        env = dict(m.env)
        env["OLLAMA_HOST"] = f"{self.host}:{port}"
        # Requests through /v1 carry no keep_alive or num_ctx: the daemon's defaults must
        # match what after_ready loaded, or Ollama unloads (5 min) or reloads the model.
        env["OLLAMA_KEEP_ALIVE"] = m.keep_alive
        if m.num_ctx is not None:
            env["OLLAMA_CONTEXT_LENGTH"] = str(m.num_ctx)
        env.update(gpu_env(m.gpus, none="-1"))  # Ollama ignores every GPU given an invalid id
        if m.models_dir is not None:
            env["OLLAMA_MODELS"] = str(m.models_dir)
        return Launch([m.binary, "serve"], env, None, "/")

    def upstream(self, port: int) -> Upstream:
        # Ollama knows the model by its tag; the proxy puts our name back in answers.
        return Upstream(f"http://{self.host}:{port}/v1", self.model.model)

    def load_body(self) -> dict[str, Any]:
        """An /api/generate without a prompt: loads the model and answers at once."""
        body: dict[str, Any] = {
            "model": self.model.model,
            "keep_alive": keep_alive_value(self.model.keep_alive),
        }
        if self.model.num_ctx is not None:
            body["options"] = {"num_ctx": self.model.num_ctx}
        return body

    def unload_body(self) -> dict[str, Any]:
        return {"model": self.model.model, "keep_alive": 0}

    async def after_ready(self, session: aiohttp.ClientSession, port: int) -> None:

        # No total limit: loading a large model takes minutes, and Ollama gives up on its
        # own (OLLAMA_LOAD_TIMEOUT) with an error that is more useful than ours.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            error = await _post(session, self._url(port), self.load_body(), timeout)
        except aiohttp.ClientError as exc:
            raise StartError(f"ollama could not load {self.model.model!r}: {exc}") from exc
        if error is not None:
            status, text = error
            reason = f"ollama could not load {self.model.model!r} (HTTP {status}): {text}"
            if status == 404:  # Ollama: "model 'TAG' not found"
                where = (
                    f" with OLLAMA_MODELS={self.model.models_dir}" if self.model.models_dir else ""
                )
                reason += f"; run `ollama pull {self.model.model}`{where} on that node"
            raise StartError(reason)

    async def before_stop(self, session: aiohttp.ClientSession, port: int) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        error = await _post(session, self._url(port), self.unload_body(), timeout)
        if error is not None:
            status, text = error
            raise RuntimeError(
                f"ollama could not unload {self.model.model!r} (HTTP {status}): {text}"
            )

    def _url(self, port: int) -> str:
        return f"http://{self.host}:{port}/api/generate"


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
) -> tuple[int, str] | None:
    """POST ``body``; None on 200, else the status and Ollama's error text."""
    async with session.post(url, json=body, timeout=timeout) as resp:
        if resp.status == 200:
            await resp.read()
            return None
        text = await resp.text()
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
        return resp.status, text.strip() or resp.reason or ""
