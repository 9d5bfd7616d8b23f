"""Loading a config file: YAML with every key's line, ``${ENV}`` expansion, located errors.

Every error names the file, the line and the key, and says what was expected.
``${VAR}`` and ``${VAR:-default}`` in any string take their value from the environment
(secrets stay out of the file); ``{port}`` in a command line is filled in when an
instance starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelyard.config.checks import cross_check
from modelyard.config.schema import CommandModel, Config, Engines, LlamaCppModel, OllamaModel

_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ConfigIssue:
    """One thing wrong in a config file, located."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '(top)'}: {self.message}"


class ConfigError(Exception):
    """A config that did not validate; ``issues`` holds every error found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read: {exc.strerror}")]
        ) from exc
    return parse_config(text, str(path), environ if environ is not None else os.environ)


def parse_config(text: str, filename: str, environ: Mapping[str, str]) -> Config:
    """Validate config ``text``; relative paths are taken from ``filename``'s folder."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(filename, line, "", f"not valid YAML: {problem}")]) from exc
    issues: list[ConfigIssue] = []
    lines: dict[tuple[str | int, ...], int] = {}
    data = _build(node, (), lines, issues, filename, environ) if node is not None else {}
    if issues:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(filename, 1, "", "expected a mapping of keys at the top")])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_issues_from(exc, lines, filename)) from exc
    from modelyard.estimate import placement_problems  # estimate builds on this module

    problems = [(p, m, True) for p, m in cross_check(config)]
    if not problems:
        problems = placement_problems(config)
    fatal = [ConfigIssue(filename, _line(lines, p), _dotted(p), m) for p, m, f in problems if f]
    if fatal:
        raise ConfigError(fatal)
    notes = [str(ConfigIssue(filename, _line(lines, p), _dotted(p), m)) for p, m, _ in problems]
    return _rooted(config.model_copy(update={"warnings": notes}), Path(filename))


def _line(lines: dict[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> int | None:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path)


def _build(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    issues: list[ConfigIssue],
    filename: str,
    environ: Mapping[str, str],
) -> Any:
    """Python data from a YAML node, noting the line of every key and expanding ``${VAR}``."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                issues.append(_issue(filename, key_node, (*path, key), "key given twice"))
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), lines, issues, filename, environ)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), lines, issues, filename, environ)
            for i, item in enumerate(node.value)
        ]
    value = _SCALARS.construct_object(node)
    if isinstance(value, str) and "${" in value:

        def expand(match: re.Match[str]) -> str:
            var, default = match.group(1), match.group(2)
            if var in environ:
                return environ[var]
            if default is not None:
                return default
            issues.append(
                _issue(
                    filename,
                    node,
                    path,
                    f"environment variable {var} is not set (set it, or write ${{{var}:-default}})",
                )
            )
            return ""

        value = _ENV.sub(expand, value)
    return value


def _issue(filename: str, node: yaml.Node, path: tuple[str | int, ...], msg: str) -> ConfigIssue:
    return ConfigIssue(filename, node.start_mark.line + 1, _dotted(path), msg)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_ENGINE_TAGS = {"llama.cpp", "command", "remote", "vllm", "ollama"}


def _issues_from(
    exc: ValidationError, lines: dict[tuple[str | int, ...], int], filename: str
) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if len(loc) > 2 and loc[0] == "models" and loc[2] in _ENGINE_TAGS:
            loc = loc[:2] + loc[3:]  # pydantic puts the engine (the union's tag) in the path
        located = loc
        while located and located not in lines:
            located = located[:-1]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (docs/config.md lists every key)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            message = "engine must be one of: llama.cpp, command, remote, vllm, ollama"
        elif err["type"] == "union_tag_not_found":
            message = "`engine:` is missing; one of: llama.cpp, command, remote, vllm, ollama"
        if (
            err["type"] != "missing"
            and "input" in err
            and not isinstance(err["input"], dict | list)
        ):
            message += f" (got {err['input']!r})"
        issues.append(ConfigIssue(filename, lines.get(located), _dotted(loc), message))
    return issues


def _rooted(config: Config, source: Path) -> Config:
    """Paths in the file are relative to the file's folder; ``~`` is the user's home."""
    base = source.resolve().parent

    def fix(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    models: dict[str, Any] = {}
    for name, model in config.models.items():
        if isinstance(model, LlamaCppModel):
            model = model.model_copy(update={"weights": fix(model.weights)})
        elif isinstance(model, CommandModel) and model.cwd is not None:
            model = model.model_copy(update={"cwd": fix(model.cwd)})
        elif isinstance(model, OllamaModel) and model.models_dir is not None:
            model = model.model_copy(update={"models_dir": fix(model.models_dir)})
        models[name] = model
    engines = config.engines
    if engines.llama_cpp.binary is not None:
        binary = fix(engines.llama_cpp.binary)
        engines = Engines.model_validate({"llama.cpp": {"binary": binary}})
    return config.model_copy(
        update={
            "models": models,
            "engines": engines,
            "state_dir": fix(config.state_dir),
            "source": source.resolve(),
        }
    )
