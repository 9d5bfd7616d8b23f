"""What an OpenAI request body must hold before it goes to an engine.

Engines answer a malformed body in their own ways, some with a 500 (llama-server, for a
message without ``role``) that SDKs take for a server fault and retry. The few things
every engine needs are checked here and refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def shape_problem(path: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with ``body`` for ``path`` and the field at fault, or None."""
    if "stream" in body and not isinstance(body["stream"], bool | None):
        return "`stream` must be true or false", "stream"
    if path == "/chat/completions":
        return _messages(body.get("messages"))
    if path == "/completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            return "`prompt` is required: a string or a list of strings or tokens", "prompt"
    if path == "/embeddings":
        given = body.get("input")
        if not isinstance(given, str | list) or (isinstance(given, list) and not given):
            return "`input` is required: a string or a list of strings or tokens", "input"
    return None


def _messages(messages: Any) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages:
        return "`messages` is required: a list of {role, content} objects", "messages"
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return f"`{where}` must be an object with `role` and `content`", where
        role = message.get("role")
        if not isinstance(role, str):
            return f"`{where}.role` is required: one of {', '.join(ROLES)}", f"{where}.role"
        if role not in ROLES:
            return (
                f"`{where}.role` is {role[:40]!r}; expected one of {', '.join(ROLES)}",
                f"{where}.role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            problem = f"`{where}.content` must be a string, a list of parts or null"
            return problem, f"{where}.content"
    return None
