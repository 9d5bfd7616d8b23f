"""What the gateway's handlers share: config, scheduler, store and the upstream client."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from modelyard import __version__
from modelyard.config import Config
from modelyard.gateway.proxy import new_session
from modelyard.scheduler import Scheduler
from modelyard.store import Store
from modelyard.supervisor import Supervisor


class Gateway:
    """The running gateway of one node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.state_dir / "modelyard.db")
        self.supervisor = Supervisor(
            config.state_dir / "logs", self._on_exit, config.scheduler.stop_grace
        )
        self.scheduler = Scheduler(config, self.supervisor, self.store)
        self.session: aiohttp.ClientSession = None  # type: ignore[assignment]  # set in open()
        self.started = time.time()

    def _on_exit(self, model: str, code: int) -> None:
        self.scheduler.on_exit(model, code)

    async def open(self) -> None:
        self.session = new_session()
        self.store.start_flusher()
        self.scheduler.start_loop()

    async def close(self) -> None:
        await self.scheduler.close()
        await self.session.close()
        await self.store.close()

    def known_names(self) -> list[str]:
        names = list(self.config.models)
        for model in self.config.models.values():
            names += model.aliases
        return names

    def wait_timeout(self, model: str) -> float:
        """How long a request may wait for its model: a swap away, then a cold start."""
        s = self.config.scheduler
        start = self.config.models[model].start_timeout or s.start_timeout
        return s.max_swap_delay + s.drain_timeout + s.stop_grace + start

    def describe(self, name: str) -> dict[str, Any]:
        model = self.config.models[name]
        return {
            "name": name,
            "aliases": model.aliases,
            "engine": model.engine,
            "swap_group": model.swap_group,
            "pinned": model.pinned,
            "ttl_s": model.ttl,
            **self.scheduler.describe(self.scheduler.instances[name]),
        }

    def model_cards(self) -> list[dict[str, Any]]:
        """/v1/models entries: the OpenAI fields plus each model's true state."""
        cards = []
        for name in self.config.models:
            info = self.describe(name)
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": int(self.started),
                    "owned_by": "modelyard",
                    **{k: info[k] for k in ("aliases", "engine", "state", "progress", "error")},
                }
            )
        return cards

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "config": str(self.config.source) if self.config.source else None,
            "listen": self.config.listen,
            "state_dir": str(self.config.state_dir),
            "uptime_s": round(time.time() - self.started, 1),
            "models": [self.describe(n) for n in self.config.models],
            "events": self.store.events(limit=20),
        }
