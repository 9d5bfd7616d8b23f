"""``command``: any OpenAI-compatible server started from a command line with ``{port}``."""

from __future__ import annotations

from modelyard.config import CommandModel
from modelyard.engines.base import Engine, Launch, Upstream, gpu_env, missing_program


class CommandEngine(Engine):
    kind = "command"

    def __init__(self, model: CommandModel, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.model = model

    def problem(self) -> str | None:
        return missing_program(self.model.command[0], "check `command`")

    def launch(self, port: int) -> Launch:
        argv = [part.replace("{port}", str(port)) for part in self.model.command]
        env = {**self.model.env, **gpu_env(self.model.gpus)}
        return Launch(argv, env, self.model.cwd, self.model.health_path)

    def upstream(self, port: int) -> Upstream:
        return Upstream(f"http://{self.host}:{port}/v1", self.model.upstream_model)
