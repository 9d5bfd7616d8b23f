"""A Chat Completions answer made a Responses answer, as it streams (pure: no I/O).

``ResponsesAnswer`` is a proxy ``Translation``: chat chunks in (split anywhere), the
Responses event sequence out: ``response.created``, ``response.in_progress``; per output
item ``response.output_item.added``, its parts and deltas, ``response.output_item.done``;
then ``response.completed`` (``response.incomplete`` when the answer was cut by length)
with the whole response and its usage. Every event has its ``sequence_number``. An error
event mid-stream becomes ``response.failed`` and ends it. Reasoning is a ``reasoning`` item
with a summary (``response.reasoning_summary_text.*``), which is what Codex shows.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from modelyard.chat_stream import ChatEvents, json_object
from modelyard.responses_answer import (
    call_item,
    envelope,
    error_body,
    message_item,
    new_id,
    reasoning_item,
    reasoning_of,
    response,
    text_part,
    usage_of,
)

_PREFIX = {"reasoning": "rs", "message": "msg"}  # the ids OpenAI gives its items


class ResponsesAnswer(ChatEvents):
    """A Chat Completions answer made a Responses answer: stream chunks in, Responses events
    out (``feed``, ``end``); a whole answer (``whole``); an error answer (``error``)."""

    content_type = "text/event-stream"

    def __init__(self, model: str, asked: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.asked = asked
        self._id = new_id("resp")
        self._created = int(time.time())
        self._sequence = 0
        self._started = False
        # The output items, in order: kind, id, text (or arguments), call_id, name.
        self._items: list[dict[str, str]] = []
        self._open: int | None = None  # the output index of the item being written
        self._calls: dict[int, int] = {}  # the engine's tool call index → output index
        self._finish: str | None = None
        self._usage: Any = None

    def whole(self, body: bytes) -> bytes:
        answer = json_object(body)
        if answer is None:
            return body
        return orjson.dumps(response(answer, self.model, self.asked))

    def error(self, status: int, body: bytes) -> bytes:
        return orjson.dumps(error_body(status, body))

    # -- reading the chat stream ------------------------------------------------------------

    def _done(self) -> bytes:
        return self._complete()

    def _chat_event(self, event: dict[str, Any]) -> bytes:
        if "error" in event:  # the gateway's or the engine's error event, mid-stream
            err = event["error"] if isinstance(event["error"], dict) else {}
            return self._fail(str(err.get("message", event["error"])), str(err.get("code") or ""))
        out = self._start()
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            thought = reasoning_of(delta)
            if thought:
                out += self._write("reasoning", thought)
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._write("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _write(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open is None or self._items[self._open]["kind"] != kind:
            out += self._close() + self._add({"kind": kind, "id": new_id(_PREFIX[kind])})
        assert self._open is not None
        index, item = self._open, self._items[self._open]
        item["text"] += text
        where = {"item_id": item["id"], "output_index": index}
        if kind == "reasoning":
            data = {**where, "summary_index": 0, "delta": text}
            return out + self._event("response.reasoning_summary_text.delta", data)
        data = {**where, "content_index": 0, "delta": text, "logprobs": []}
        return out + self._event("response.output_text.delta", data)

    def _call(self, call: dict[str, Any]) -> bytes:
        key = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        if key not in self._calls:  # a new call: its id and name come first
            out += self._close()
            fields = {
                "kind": "function_call",
                "id": new_id("fc"),
                "call_id": call.get("id") or new_id("call"),
                "name": function.get("name") or "",
            }
            out += self._add(fields)
            self._calls[key] = len(self._items) - 1
        index = self._calls[key]
        item = self._items[index]
        if function.get("name") and not item["name"]:  # an engine that names it late
            item["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A call written to after it was closed (calls interleaved) still gets its
            # arguments into the final response.
            item["text"] += arguments
            where = {"item_id": item["id"], "output_index": index, "delta": arguments}
            out += self._event("response.function_call_arguments.delta", where)
        return out

    # -- writing the Responses events -------------------------------------------------------

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _envelope(self, **state: Any) -> dict[str, Any]:
        return envelope(self._id, self.model, self.asked, self._created, **state)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        out = self._event("response.created", {"response": self._envelope()})
        return out + self._event("response.in_progress", {"response": self._envelope()})

    def _item(self, index: int, status: str) -> dict[str, Any]:
        item = self._items[index]
        if item["kind"] == "reasoning":
            return reasoning_item(item["id"], item["text"], status)
        if item["kind"] == "message":
            return message_item(item["id"], item["text"], status)
        return call_item(item["id"], item["call_id"], item["name"], item["text"], status)

    def _add(self, fields: dict[str, str]) -> bytes:
        index = len(self._items)
        self._items.append({"text": "", **fields})
        self._open = index
        added = {"output_index": index, "item": self._item(index, "in_progress")}
        out = self._event("response.output_item.added", added)
        where = {"item_id": fields["id"], "output_index": index}
        if fields["kind"] == "reasoning":
            part = {"type": "summary_text", "text": ""}
            part_added = {**where, "summary_index": 0, "part": part}
            out += self._event("response.reasoning_summary_part.added", part_added)
        elif fields["kind"] == "message":
            part_added = {**where, "content_index": 0, "part": text_part("")}
            out += self._event("response.content_part.added", part_added)
        return out

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        item = self._items[index]
        text, where = item["text"], {"item_id": item["id"], "output_index": index}
        if item["kind"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            out = self._event(
                "response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text}
            )
            out += self._event(
                "response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part}
            )
        elif item["kind"] == "message":
            done = {**where, "content_index": 0, "text": text, "logprobs": []}
            out = self._event("response.output_text.done", done)
            part_done = {**where, "content_index": 0, "part": text_part(text)}
            out += self._event("response.content_part.done", part_done)
        else:
            out = self._event("response.function_call_arguments.done", {**where, "arguments": text})
        item_done = {"output_index": index, "item": self._item(index, "completed")}
        return out + self._event("response.output_item.done", item_done)

    def _complete(self) -> bytes:
        if self._ended:
            return b""
        out = self._start() + self._close()
        self._ended = True
        output = [self._item(i, "completed") for i in range(len(self._items))]
        whole = self._envelope(
            finish=self._finish or "stop", output=output, usage=usage_of(self._usage)
        )
        kind = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, {"response": whole})

    def _fail(self, message: str, code: str) -> bytes:
        out = self._start()
        self._ended = True
        # What was written so far, the open item cut short: the client sees where it stopped.
        output = [
            self._item(i, "incomplete" if i == self._open else "completed")
            for i in range(len(self._items))
        ]
        failed = self._envelope(output=output, usage=None, failed=message, code=code)
        return out + self._event("response.failed", {"response": failed})
