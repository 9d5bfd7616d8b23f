"""What an OpenAI request body says, and must hold before it goes to an engine (pure).

``features``: what routing reads of it (the model asked, the text for the token estimate,
tools, images, the headers a rule names). ``apply_edits``: the changes a Decision makes to
it (a rule's prompt tags stripped; a persona's system prompt and sampling defaults).
``shape_problem``: engines answer a malformed body in their own ways, some with a 500
(llama-server, for a message without ``role``) that SDKs take for a server fault and retry;
the few things every engine needs are checked here and refused with a 400 naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.routing import Decision, Features

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
    if path == "/audio/speech":
        given = body.get("input")
        if not isinstance(given, str) or not given.strip():
            return "`input` is required: the text to speak, a non-empty string", "input"
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


@dataclass(slots=True)  # not frozen: made for every request, and frozen costs 3x
class BodyFeatures:
    """The request features routing takes from a body, whatever its protocol (the model
    and the headers come apart): an OpenAI body's by ``body_features``; another protocol's
    front-end reads them off its own body (``anthropic_body.read``, ``responses_body.read``),
    where translating it only for that would cost every request passed through as it came."""

    last_user: str  # the last user message's text
    chars: int  # of every message's text, the system prompt's included
    count: int  # messages, as Chat Completions counts them
    images: bool
    tools: bool
    max_tokens: int  # asked for; 0: not said


def body_features(body: Mapping[str, Any]) -> BodyFeatures:
    """What an OpenAI chat, completions or embeddings body says."""
    messages = body.get("messages")
    chars = count = 0
    last_user = ""
    images = False
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += 1
            text, has_image = _content_text(message.get("content"))
            images = images or has_image
            chars += len(text)
            if message.get("role") == "user":
                last_user = text
    elif isinstance(body.get("prompt"), str):
        last_user = body["prompt"]
        chars, count = len(last_user), 1
    tools = bool(body.get("tools") or body.get("functions"))
    limit = _int(body.get("max_completion_tokens", body.get("max_tokens")))
    return BodyFeatures(last_user, chars, count, images, tools, limit)


def features(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    keep: Collection[str] | None = None,
    endpoint: str = "chat",
    header_count: int = 0,
    header_bytes: int = 0,
    text: BodyFeatures | None = None,
) -> Features:
    """Features of an OpenAI chat, completions or embeddings body, read without changing it
    (``text``: what another protocol's front-end read of its own body instead).

    ``keep``: the (lower-case) header names to keep, e.g. ``header_names(config)``; None
    keeps every header. ``header_count`` and ``header_bytes`` summarise them all.
    """
    read = body_features(body) if text is None else text
    return Features(
        model=str(body.get("model", "")),
        headers=(
            {k.lower(): v for k, v in headers.items()}
            if keep is None
            else {k: v for k in keep if (v := headers.get(k)) is not None}
        ),
        last_user=read.last_user,
        tokens=-(-read.chars // 3) + 4 * read.count,
        tools=read.tools,
        images=read.images,
        max_tokens=read.max_tokens,
        endpoint=endpoint,
        header_count=header_count,
        header_bytes=header_bytes,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _content_text(content: Any) -> tuple[str, bool]:
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return "", False
    parts, image = [], False
    for part in content:
        if isinstance(part, dict):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image", "image"):
                image = True
    return "\n".join(parts), image


def apply_edits(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """``body`` as ``decision`` has it go upstream (itself when there is nothing to change)."""
    if decision.strip:
        body = strip_tags(body, decision.strip)
    if decision.persona is not None:
        body = apply_persona(body, decision.system, decision.defaults)
    return body


# A default the client set under another name: OpenAI's newer name for max_tokens.
_SAME_AS = {"max_tokens": ("max_completion_tokens",)}


def apply_persona(
    body: dict[str, Any], system: str | None, defaults: tuple[tuple[str, Any], ...]
) -> dict[str, Any]:
    """``body`` with a persona's edits (a copy): its system prompt first, and each sampling
    default where the body does not set it (a key given, even as null, is the client's).

    A system message the client sent first is kept, after the persona's prompt, in the same
    message: many chat templates (Gemma's, Mistral's) refuse two system messages or one
    that is not first, and llama-server answers that with a 500."""
    out = dict(body)
    messages = body.get("messages")
    if system and isinstance(messages, list):
        first = messages[0] if messages else None
        if isinstance(first, dict) and first.get("role") == "system":
            mine = first.get("content")
            if isinstance(mine, str):
                merged: Any = f"{system}\n\n{mine}"
            elif isinstance(mine, list):
                merged = [{"type": "text", "text": system}, *mine]
            else:
                merged = system
            out["messages"] = [{**first, "content": merged}, *messages[1:]]
        else:
            out["messages"] = [{"role": "system", "content": system}, *messages]
    for key, value in defaults:
        if key not in body and not any(k in body for k in _SAME_AS.get(key, ())):
            out[key] = value
    return out


def strip_tags(body: dict[str, Any], patterns: tuple[str, ...]) -> dict[str, Any]:
    """``body`` with the prompt tags removed from its last user message (a copy)."""
    messages = body.get("messages")
    if not patterns or not isinstance(messages, list):
        return body
    messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                for pattern in patterns:
                    content = re.sub(pattern, "", content)
                message["content"] = content.strip()
            elif isinstance(content, list):
                parts = []
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        text = part["text"]
                        for pattern in patterns:
                            text = re.sub(pattern, "", text)
                        part = {**part, "text": text.strip()}
                    parts.append(part)
                message["content"] = parts
            break
    return {**body, "messages": messages}
