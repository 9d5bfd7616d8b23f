"""Loading a config file: YAML with every key's line, ``${ENV}`` expansion, located errors.

Every error names the file, the line and the key, and says what was expected.
``${VAR}`` and ``${VAR:-default}`` in any string take their value from the environment
(secrets stay out of the file); ``{port}`` in a command line is filled in when an
instance starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from modelyard.config.checks import cross_check, cross_check_parts
from modelyard.config.schema import Config
from modelyard.engines.catalog import KINDS
from modelyard.estimate import placement_problems

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


def variables(text: str) -> list[str]:
    """The environment variables a config's text reads (``${VAR}``), sorted."""
    return sorted({m.group(1) for m in _ENV.finditer(text)})


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read: {exc.strerror}")]
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {column}; save it as UTF-8"
        raise ConfigError([ConfigIssue(str(path), line, "", message)]) from None
    return parse_config(text, str(path), environ if environ is not None else os.environ)


def parse_config(text: str, filename: str, environ: Mapping[str, str]) -> Config:
    """Validate config ``text``; relative paths are taken from ``filename``'s folder.

    Every error is reported at once: those of the YAML (keys given twice, unset variables),
    of the types, and of the cross-checks on every part that validates.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, text, filename)]) from exc
    issues: list[ConfigIssue] = []
    lines: dict[tuple[str | int, ...], int] = {}
    data = _build(node, (), lines, issues, filename, environ) if node is not None else {}
    if not isinstance(data, dict):
        issues.append(ConfigIssue(filename, 1, "", "expected a mapping of keys at the top"))
        raise ConfigError(issues)

    def located(problems: list[tuple[tuple[str | int, ...], str]]) -> list[ConfigIssue]:
        return [ConfigIssue(filename, _line(lines, p), _dotted(p), m) for p, m in problems]

    found: list[ConfigIssue] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        found += _issues_from(exc, lines, filename)
        found += located(cross_check_parts(data))
    else:
        config = _rooted(config, Path(filename), lambda p, m: found.extend(located([(p, m)])))
        found += located(cross_check(config))
    # A value already reported (an unset variable read as "", a key given twice) is not
    # reported again for what it then was.
    found = [f for f in found if not any(_overlap(f.key, i.key) for i in issues)]
    if issues or found or config is None:
        raise ConfigError(issues + found)
    problems = placement_problems(config)
    fatal = [(p, m) for p, m, f in problems if f]
    if fatal:
        raise ConfigError(located(fatal))
    notes = [str(i) for i in located([(p, m) for p, m, _ in problems])]
    return config.model_copy(update={"warnings": notes})


def _overlap(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are the same value or one is inside the other."""
    a, b = sorted((a, b), key=len)
    return b == a or b.startswith((f"{a}.", f"{a}["))


def _yaml_issue(exc: yaml.YAMLError, text: str, filename: str) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses: no mark of its own
        line = text.count("\n", 0, exc.position) + 1
        problem = str(exc).split("\n", 1)[0]
    return ConfigIssue(filename, line, "", f"not valid YAML: {problem}")


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


_ENGINES = ", ".join(KINDS)


def _issues_from(
    exc: ValidationError, lines: dict[tuple[str | int, ...], int], filename: str
) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if len(loc) > 2 and loc[0] == "models" and loc[2] in KINDS:
            loc = loc[:2] + loc[3:]  # pydantic puts the engine (the union's tag) in the path
        located = loc
        if err["type"] == "union_tag_invalid" and (*loc, "engine") in lines:
            located = (*loc, "engine")  # the line that says the engine, not the model's
        while located and located not in lines:
            located = located[:-1]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (docs/config.md lists every key)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            message = f"engine must be one of: {_ENGINES}"
        elif err["type"] == "union_tag_not_found":
            message = f"`engine:` is missing; one of: {_ENGINES}"
        if (
            err["type"] != "missing"
            and "input" in err
            and not isinstance(err["input"], dict | list)
        ):
            message += f" (got {err['input']!r})"
        issues.append(ConfigIssue(filename, lines.get(located), _dotted(loc), message))
    return issues


def _rooted(
    config: Config, source: Path, report: Callable[[tuple[str | int, ...], str], None]
) -> Config:
    """Every path in the file taken from the file's folder, with ``~`` the user's home.

    Every field typed ``Path`` is found wherever it is (top level, nodes, each engine's
    models, engines), so a new one cannot be left relative to wherever the process runs.
    """
    base = source.resolve().parent

    def root(value: Any, at: tuple[str | int, ...]) -> Any:
        if isinstance(value, Path):
            try:
                value = value.expanduser()
            except RuntimeError as exc:  # ~user with no such user, or no home at all
                report(at, f"cannot expand ~: {exc} (got {str(value)!r})")
                return value
            return value if value.is_absolute() else base / value
        if isinstance(value, BaseModel):
            update = {}
            for name, field in type(value).model_fields.items():
                old = getattr(value, name)
                new = root(old, (*at, field.alias or name))
                if new is not old:
                    update[name] = new
            return value.model_copy(update=update) if update else value
        if isinstance(value, dict):
            items = {k: root(v, (*at, k)) for k, v in value.items()}
            return items if any(items[k] is not value[k] for k in value) else value
        if isinstance(value, list):
            elements = [root(v, (*at, i)) for i, v in enumerate(value)]
            return (
                elements if any(e is not v for e, v in zip(elements, value, strict=True)) else value
            )
        return value

    rooted = root(config, ())
    assert isinstance(rooted, Config)
    return rooted.model_copy(update={"source": source.resolve()})
