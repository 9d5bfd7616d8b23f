"""``command``: any OpenAI-compatible server started from a command line with ``{port}``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from modelyard.engines.base import Engine, Launch, Upstream, gpu_env, missing_program
from modelyard.model_spec import Arg, ModelBase


class CommandModel(ModelBase):
    """Any OpenAI-compatible server started from a command line containing ``{port}``."""

    engine: Literal["command"]
    command: list[Arg] = Field(min_length=1)
    env: dict[str, Arg] = Field(default_factory=dict)
    health_path: str = Field("/health", description="GET path that answers 200 once ready.")
    upstream_model: str | None = Field(None, description="Model name the server expects.")
    cwd: Path | None = None

    @field_validator("command")
    @classmethod
    def _has_port(cls, value: list[str]) -> list[str]:
        if not any("{port}" in part for part in value):
            raise ValueError("the command must contain {port}, where modelyard puts a free port")
        return value


class CommandEngine(Engine[CommandModel]):
    kind = "command"
    config = CommandModel

    def problem(self) -> str | None:
        return missing_program(self.model.command[0], "check `command`")

    def launch(self, port: int) -> Launch:
        argv = [part.replace("{port}", str(port)) for part in self.model.command]
        env = {**self.model.env, **gpu_env(self.model.gpus)}
        return Launch(argv, env, self.model.cwd, self.model.health_path)

    def upstream(self, port: int) -> Upstream:
        return Upstream(f"http://{self.host}:{port}/v1", self.model.upstream_model)


ENGINE = CommandEngine
