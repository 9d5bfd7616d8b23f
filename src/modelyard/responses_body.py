"""OpenAI's Responses API requests in Chat Completions terms (pure: no I/O).

``read``: what routing reads of a ``POST /v1/responses`` body (``openai_body.BodyFeatures``), or
what is wrong with it and where: every check, no translation, so that a request passed as
it came to an engine that speaks Responses pays for none. ``translate``: the Chat
Completions body an engine that does not speak Responses is sent (input items,
instructions, images, function calls and their outputs, function tools, ``tool_choice``,
``text.format``, ``reasoning.effort``), of a body ``read`` accepted; ``to_chat`` does both.
``declined_tools``: the built-in tools (web search, code interpreter, ...) the translation
leaves out, which no engine here runs. The answer's side is ``responses_answer``.

Stateless: ``previous_response_id`` and ``store`` mean nothing here; the caller refuses the
first where the engine does not speak Responses itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.openai_body import BodyFeatures

Problem = tuple[str, str]  # what is wrong, and the field at fault

# What the Responses API itself defines: read here, or of no use to an engine (an engine's
# own parameters, anything else, pass through).
_RESPONSES_KEYS = frozenset(("model", "input", "instructions", "max_output_tokens",
    "temperature", "top_p", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "text", "reasoning", "previous_response_id", "store", "metadata",
    "include", "truncation", "user", "service_tier", "background", "background_options",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "safety_identifier",
    "max_tool_calls", "top_logprobs", "access_programs", "context_management", "image",
    "moderation", "conversation", "prompt"))  # fmt: skip
# Kept by OpenAI between requests: nothing here can stand in for them.
_STORED = {"conversation": "a conversation", "prompt": "a stored prompt"}
_ROLES = ("user", "assistant", "system", "developer")
_TEXTS = ("input_text", "output_text")


def to_chat(body: dict[str, Any]) -> dict[str, Any] | Problem:
    """The Chat Completions body for a Responses ``body``, or the problem with it. The
    built-in tools it leaves out are ``declined_tools(body)``."""
    problem = read(body)
    return problem if isinstance(problem, tuple) else translate(body)


def declined_tools(body: dict[str, Any]) -> list[str]:
    """The types of the tools in ``body`` that are not functions (web_search, mcp, custom,
    ...), once each in order: ``to_chat`` leaves them out rather than fail the request (as
    openai/codex#10635 asks), and the caller can say so."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    kinds = [t.get("type") for t in tools if isinstance(t, dict)]
    return list(dict.fromkeys(k for k in kinds if isinstance(k, str) and k != "function"))


# -- reading: the checks, and what routing needs ----------------------------------------------


def read(body: dict[str, Any]) -> BodyFeatures | Problem:
    """What routing reads of a Responses ``body``, counted as its translation would be (the
    same features either way), or the problem with it."""
    for key, what in _STORED.items():
        if body.get(key) is not None:
            return f"`{key}` needs {what} kept by the server: send the whole `input`", key
    chars = count = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            chars, count = len(instructions), 1
    elif instructions is not None:
        return "`instructions` must be a string", "instructions"
    given = body.get("input")
    if isinstance(given, str) and given:
        said = BodyFeatures(given, chars + len(given), count + 1, False, False, 0)
    else:
        items = _read_input(given)
        if isinstance(items, tuple):
            return items
        said = items
        said.chars += chars
        said.count += count
    if said.count == 0:
        return "`input` has nothing to send: every item in it is empty", "input"
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            return "`max_output_tokens` must be a whole number of at least 1", "max_output_tokens"
        said.max_tokens = limit
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if isinstance(tools, tuple):
        return tools
    said.tools = "tools" in tools
    text = _text(body.get("text"))
    if isinstance(text, tuple):
        return text
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        return "`reasoning` must be an object: {effort, summary}", "reasoning"
    return said


def _read_input(given: Any) -> BodyFeatures | Problem:
    """What routing reads of an ``input`` list of items (not a string)."""
    if not isinstance(given, list) or not given:
        return "`input` is required: a string or a list of items", "input"
    said = BodyFeatures("", 0, 0, False, False, 0)
    last = None  # the role of the last Chat Completions message: calls join an assistant's
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            return f"`input.{i}` must be an object", f"input.{i}"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            turned = _read_message(item, i, said)
            if isinstance(turned, tuple):
                return turned
            last = turned or last
        elif kind == "function_call":
            call = _call(item, f"input.{i}")
            if isinstance(call, tuple):
                return call
            if last != "assistant":
                said.count, last = said.count + 1, "assistant"
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not item["call_id"]:
                why = "a function_call_output needs the `call_id` it answers"
                return why, f"input.{i}.call_id"
            output = _output_text(item.get("output"))
            if output is None:
                why = "a function_call_output's `output` must be a string or a list of parts"
                return why, f"input.{i}.output"
            said.chars, said.count, last = said.chars + len(output), said.count + 1, "tool"
        elif kind != "reasoning":  # an earlier turn's reasoning: not sent back to the engine
            return f"an input item of type {kind!r} is not supported here", f"input.{i}.type"
    return said


def _read_message(item: dict[str, Any], i: int, said: BodyFeatures) -> Problem | str | None:
    """A message item read into ``said``: its Chat Completions role (None: it has nothing to
    send), or the problem with it."""
    role, content = item.get("role"), item.get("content")
    if role not in _ROLES:
        return f"`input.{i}.role` must be one of: {', '.join(_ROLES)}", f"input.{i}.role"
    chat_role = "system" if role == "developer" else role  # what chat templates know
    image = False
    if isinstance(content, str):
        text = content
    elif not isinstance(content, list):
        why = f"`input.{i}.content` must be a string or a list of parts"
        return why, f"input.{i}.content"
    else:
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _TEXTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            elif kind == "input_image" and role == "user":
                problem = _image_problem(part, f"input.{i}.content.{j}")
                if problem is not None:
                    return problem
                image = True
            else:
                why = f"a {kind!r} part is not supported in a {role} message here"
                return why, f"input.{i}.content.{j}.type"
        if not texts and not image:
            return None
        text = "\n".join(texts) if image else "".join(texts)  # as features joins parts
    said.chars += len(text)
    said.count += 1
    said.images = said.images or image
    if chat_role == "user":
        said.last_user = text
    return chat_role


def _image_problem(part: dict[str, Any], at: str) -> Problem | None:
    if part.get("file_id") is not None and part.get("image_url") is None:
        why = "files are not kept here: send the image as `image_url` (a URL or data: URL)"
        return why, f"{at}.file_id"
    if not isinstance(part.get("image_url"), str):
        return "an input_image needs `image_url`: a URL or a data: URL", f"{at}.image_url"
    return None


# -- translating: a body read accepted --------------------------------------------------------


def translate(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body for a Responses ``body`` that ``read`` accepted."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    given = body["input"]
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        for item in given:
            _add_item(messages, item)
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the usage response.completed needs
    for part in (_tools(body.get("tools"), body.get("tool_choice")), _text(body.get("text"))):
        assert isinstance(part, dict), "read accepted it"
        chat.update(part)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    for key, value in body.items():  # an engine's own parameters pass (llama.cpp's, ...)
        if key not in _RESPONSES_KEYS:
            chat.setdefault(key, value)
    return chat


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """An input item onto the Chat Completions ``messages``."""
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = "system" if item["role"] == "developer" else item["role"]
        content = item["content"]
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            return
        parts = [_part(part) for part in content]
        if not parts:
            return
        if all(p["type"] == "text" for p in parts):
            messages.append({"role": role, "content": "".join(p["text"] for p in parts)})
        else:
            messages.append({"role": role, "content": parts})
    elif kind == "function_call":
        call = _call(item, "")
        assert isinstance(call, dict), "read accepted it"
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # the same turn: one message
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        text = _output_text(item.get("output"))
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in _TEXTS:
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": part["refusal"]}
    image: dict[str, Any] = {"url": part["image_url"]}
    if part.get("detail") in ("low", "high", "auto"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _call(item: dict[str, Any], where: str) -> dict[str, Any] | Problem:
    for key in ("call_id", "name"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"a function_call needs `{key}`", f"{where}.{key}"
    arguments = item.get("arguments", "")
    if isinstance(arguments, dict):
        arguments = orjson.dumps(arguments).decode()
    if not isinstance(arguments, str):
        return "a function_call's `arguments` must be a JSON string", f"{where}.arguments"
    function = {"name": item["name"], "arguments": arguments or "{}"}
    return {"id": item["call_id"], "type": "function", "function": function}


def _output_text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # its text parts (an image or a file in an output is dropped)
        texts = [p.get("text") for p in output if isinstance(p, dict) and "text" in p]
        return "\n".join(t for t in texts if isinstance(t, str))
    return None


def _tools(tools: Any, choice: Any) -> dict[str, Any] | Problem:
    out: dict[str, Any] = {}
    functions = []
    if tools is not None:
        if not isinstance(tools, list):
            return "`tools` must be a list", "tools"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                return "each tool needs a `type`", f"tools.{i}.type"
            if tool["type"] != "function":
                continue  # a built-in tool: declined (declined_tools), the request goes on
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return "a function tool needs a `name`", f"tools.{i}.name"
            function: dict[str, Any] = {"name": tool["name"]}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
            functions.append({"type": "function", "function": function})
    if functions:
        out["tools"] = functions
    if choice is None:
        return out
    if choice in ("auto", "none", "required"):
        chat_choice: Any = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            return "a `tool_choice` of type function needs `name`", "tool_choice.name"
        chat_choice = {"type": "function", "function": {"name": choice["name"]}}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        return "`tool_choice` {type: allowed_tools} is not supported here", "tool_choice"
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        return out  # a built-in tool's: declined with the tool
    else:
        why = "`tool_choice` must be auto, none, required or {type: function, name}"
        return why, "tool_choice"
    if functions:  # with no tools sent an engine refuses any choice
        out["tool_choice"] = chat_choice
    return out


def _text(text: Any) -> dict[str, Any] | Problem:
    if text is None:
        return {}
    if not isinstance(text, dict):
        return "`text` must be an object: {format}", "text"
    form = text.get("format")
    kind = form.get("type") if isinstance(form, dict) else None
    if form is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        assert isinstance(form, dict)
        if not isinstance(form.get("name"), str) or not isinstance(form.get("schema"), dict):
            return "a json_schema format needs `name` and `schema`", "text.format"
        schema = {"name": form["name"], "schema": form["schema"]}
        for key in ("strict", "description"):
            if form.get(key) is not None:
                schema[key] = form[key]
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    return "`text.format` must be {type: text}, {type: json_object} or json_schema", "text.format"
