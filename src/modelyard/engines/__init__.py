"""Engine adapters: how each kind of model server is started, probed and spoken to."""

from __future__ import annotations

from modelyard.config import CommandModel, LlamaCppModel, Model, RemoteModel
from modelyard.engines.base import Engine, Launch, Upstream
from modelyard.engines.command import CommandEngine
from modelyard.engines.llamacpp import LlamaCppEngine
from modelyard.engines.remote import RemoteEngine

__all__ = ["Engine", "Launch", "Upstream", "engine_for"]


def engine_for(model: Model, llama_binary: str | None = None) -> Engine:
    """The adapter that runs ``model``."""
    if isinstance(model, LlamaCppModel):
        return LlamaCppEngine(model, llama_binary)
    if isinstance(model, CommandModel):
        return CommandEngine(model)
    if isinstance(model, RemoteModel):
        return RemoteEngine(model)
    raise TypeError(f"no engine for {type(model).__name__}")
