"""``ollama``: one ``ollama serve`` daemon per model, its model loaded once it is up.

The daemon is started on a free port with the model's GPUs; once ``/`` answers, an empty
``/api/generate`` loads the model (so readiness means loaded, not just listening), and
before the daemon is stopped the same call with ``keep_alive: 0`` unloads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from modelyard.engines.base import (
    Engine,
    Http,
    Launch,
    Upstream,
    gpu_env,
    missing_program,
)
from modelyard.errors import StartError
from modelyard.model_spec import Arg, ModelBase

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class OllamaModel(ModelBase):
    """A model tag served by an ``ollama serve`` daemon of its own."""

    engine: Literal["ollama"]
    model: str = Field(description="The Ollama tag, e.g. mistral:7b-instruct-q5_K_M.")
    binary: str = Field("ollama", description="The ollama program: a name on PATH or a path.")
    keep_alive: Arg = Field("-1", description="Ollama's keep_alive; -1 = until modelyard stops it.")
    num_ctx: int | None = Field(None, ge=1, description="Context window (tokens), num_ctx.")
    env: dict[str, Arg] = Field(default_factory=dict)
    models_dir: Path | None = Field(None, description="OLLAMA_MODELS; default: Ollama's own.")

    @field_validator("env")
    @classmethod
    def _no_managed_env(cls, value: dict[str, str]) -> dict[str, str]:
        if "OLLAMA_HOST" in value:
            raise ValueError("OLLAMA_HOST is set by modelyard (each instance gets a free port)")
        return value


def keep_alive_value(text: str) -> int | float | str:
    """Ollama's API reads a JSON number as seconds and a string as a Go duration ("10m");
    a bare number sent as a string ("-1") is refused, so numbers go as numbers."""
    if _NUMBER.match(text.strip()):
        number = float(text)
        return int(number) if number.is_integer() else number
    return text


class OllamaEngine(Engine[OllamaModel]):
    kind = "ollama"
    config = OllamaModel

    def problem(self) -> str | None:
        return missing_program(self.model.binary, "install Ollama, or set `binary`")

    def launch(self, port: int) -> Launch:
        m = self.model
        env = dict(m.env)
        env["OLLAMA_HOST"] = f"{self.listen}:{port}"
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

    async def after_ready(self, http: Http, port: int) -> None:
        # No total limit: loading a large model takes minutes, and Ollama gives up on its
        # own (OLLAMA_LOAD_TIMEOUT) with an error that is more useful than ours.
        try:
            error = _error(*await http.post_json(self._url(port), self.load_body(), None))
        except OSError as exc:
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

    async def before_stop(self, http: Http, port: int) -> None:
        error = _error(*await http.post_json(self._url(port), self.unload_body(), 10))
        if error is not None:
            status, text = error
            raise RuntimeError(
                f"ollama could not unload {self.model.model!r} (HTTP {status}): {text}"
            )

    def _url(self, port: int) -> str:
        return f"http://{self.local}:{port}/api/generate"  # from its own node


def _error(status: int, text: str) -> tuple[int, str] | None:
    """None for a 200, else the status and Ollama's error text (its JSON ``error``)."""
    if status == 200:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = data["error"]
    return status, text.strip() or f"HTTP {status}"


ENGINE = OllamaEngine
