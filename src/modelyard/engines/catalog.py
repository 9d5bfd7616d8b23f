"""Every engine, found by looking: each module of this package with an ``ENGINE``.

Adding an engine is adding its module (config class, facts and adapter, see ``base``):
the config file's ``engine:`` tags, the schema's union of model classes and
``engine_for`` all come from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

import modelyard.engines
from modelyard.engines.base import Engine
from modelyard.model_spec import ModelBase

if TYPE_CHECKING:
    from modelyard.config.schema import Engines

# Listed first, in this order; any other engine follows in the order of its module's name.
_FIRST = ("llamacpp", "command", "remote", "vllm", "ollama")


def _discover() -> dict[str, type[Engine[Any]]]:
    names = [m.name for m in pkgutil.iter_modules(modelyard.engines.__path__)]
    ordered = [n for n in _FIRST if n in names] + sorted(set(names) - set(_FIRST))
    found: dict[str, type[Engine[Any]]] = {}
    for name in ordered:
        module = importlib.import_module(f"modelyard.engines.{name}")
        engine = getattr(module, "ENGINE", None)
        if engine is not None:
            assert engine.kind not in found, f"two engines named {engine.kind!r}"
            found[engine.kind] = engine
    return found


ENGINES: dict[str, type[Engine[Any]]] = _discover()
KINDS: tuple[str, ...] = tuple(ENGINES)  # the tags ``engine:`` takes

if TYPE_CHECKING:
    Model = ModelBase
else:
    # A model of the config file: one engine's config class, told apart by ``engine:``.
    Model = Annotated[
        Union[tuple(e.config for e in ENGINES.values())],  # noqa: UP007
        Field(discriminator="engine"),
    ]


def engine_for(
    model: ModelBase,
    host: str = "127.0.0.1",
    settings: Engines | None = None,
    listen: str | None = None,
) -> Engine[Any]:
    """The adapter that runs ``model``, its server reached at ``host`` (bound to ``listen``,
    by default ``host``)."""
    return ENGINES[model.engine](model, host, settings, listen)
