"""Engine adapters: how each kind of model server is started, probed and spoken to."""

from __future__ import annotations

from modelyard.config import (
    CommandModel,
    LlamaCppModel,
    Model,
    OllamaModel,
    RemoteModel,
    VllmModel,
)
from modelyard.engines.base import Engine, Launch, StartError, Upstream
from modelyard.engines.command import CommandEngine
from modelyard.engines.llamacpp import LlamaCppEngine
from modelyard.engines.ollama import OllamaEngine
from modelyard.engines.remote import RemoteEngine
from modelyard.engines.vllm import VllmEngine

__all__ = ["Engine", "Launch", "StartError", "Upstream", "engine_for"]


def engine_for(model: Model, llama_binary: str | None = None, host: str = "127.0.0.1") -> Engine:
    """The adapter that runs ``model``, its server listening on ``host``."""
    if isinstance(model, LlamaCppModel):
        return LlamaCppEngine(model, llama_binary, host)
    if isinstance(model, CommandModel):
        return CommandEngine(model, host)
    if isinstance(model, RemoteModel):
        return RemoteEngine(model)
    if isinstance(model, VllmModel):
        return VllmEngine(model, host)
    if isinstance(model, OllamaModel):
        return OllamaEngine(model, host)
    raise TypeError(f"no engine for {type(model).__name__}")
