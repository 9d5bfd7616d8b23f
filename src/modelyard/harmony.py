"""Harmony, the answer format of OpenAI's gpt-oss models, parsed out of an answer's text (pure).

An engine that parses Harmony (llama-server with its gpt-oss template, vLLM) sends the
final answer as ``content`` and the chain of thought as ``reasoning_content``. One that
does not (an older llama-server, a command engine, a wrong template) sends the model's
text as it came, tags and all::

    <|channel|>analysis<|message|>A sum.<|end|><|start|>assistant<|channel|>final<|message|>4

The grammar (github.com/openai/harmony, docs/format.md)::

    answer  := message*                      the first message's <|start|>assistant is
                                             the prompt's, so it may be missing
    message := [<|start|> ROLE] [<|channel|> CHANNEL] [<|constrain|> TYPE] <|message|> TEXT END
    END     := <|end|> | <|return|> | <|call|>    (or nothing, where the answer stops)

ROLE or CHANNEL may carry a recipient, ``to=functions.NAME``: the message is then a tool
call and its TEXT the call's arguments. Where a message's TEXT goes:

- ``analysis``: the chain of thought, to reasoning.
- any message with a recipient (a tool call, on ``commentary``, or a built-in tool on
  ``analysis``): to reasoning. Its arguments are no answer, and only the engine, which
  knows the request's tools, could make them a ``tool_calls``.
- ``commentary`` without a recipient (a preamble before tool calls): to the answer, as
  the format says it is meant for the user.
- ``final``, any other channel, no channel, and text before any tag: to the answer.

Tags, roles, channel names and recipients never reach either; two messages that go to the
same place are joined by a newline. Text between messages (the model's stray newlines) is
dropped when it is only white space. Only the seven tags
above are tags: any other ``<|...|>`` is text.

:class:`Parser` does it piece by piece as a stream comes: a tag cut between two pieces,
at any place, is held back until the next (only what may still begin a tag, never more),
so text without tags comes out exactly as it went in.
"""

from __future__ import annotations

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN, RETURN, CALL = "<|constrain|>", "<|return|>", "<|call|>"
TAGS = frozenset({START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL})
_ENDS = frozenset({END, RETURN, CALL})
_PREFIXES = frozenset(tag[:n] for tag in TAGS for n in range(1, len(tag)))
_LONGEST = max(len(tag) for tag in TAGS)
_HEADER_KEPT = 200  # of a header's part: enough for a channel and a recipient

# Where text goes now.
_ANSWER, _REASONING, _HEADER, _BETWEEN = range(4)


class Parser:
    """One answer's Harmony, fed piece by piece: ``feed`` → (answer, reasoning) so far."""

    def __init__(self) -> None:
        self._held = ""  # a possible tag's beginning, at the end of the last piece
        self._state = _ANSWER  # text before any tag is the answer, as it came
        self._part = ""  # the tag that opened the header part being read
        self._part_text = ""
        self._channel = ""
        self._recipient = False
        self._gap = ""  # white space between messages: shown only if text follows it
        self._answer: list[str] = []
        self._reasoning: list[str] = []
        self._wrote = [False, False]  # answer, reasoning: some text went there already
        self._apart = [False, False]  # a new message began there: a newline before its text

    def feed(self, text: str) -> tuple[str, str]:
        """The answer's and the reasoning's text that ``text`` completes."""
        data = self._held + text if self._held else text
        self._held = ""
        done = scan = 0
        while (at := data.find("<|", scan)) >= 0:
            close = data.find("|>", at + 2, at + _LONGEST)
            if close < 0:
                if data[at:] in _PREFIXES:  # cut at the end: wait for the rest
                    self._text(data[done:at])
                    self._held = data[at:]
                    return self._out()
                scan = at + 1
                continue
            tag = data[at : close + 2]
            if tag not in TAGS:
                scan = at + 1
                continue
            self._text(data[done:at])
            self._tag(tag)
            done = scan = close + 2
        if data.endswith("<"):
            self._text(data[done:-1])
            self._held = "<"
        else:
            self._text(data[done:])
        return self._out()

    def end(self) -> tuple[str, str]:
        """What is left once the answer is over: a held ``<|...`` was text after all."""
        held, self._held = self._held, ""
        self._text(held)
        self._gap = ""  # an unfinished header, or white space after the last message: dropped
        return self._out()

    def _out(self) -> tuple[str, str]:
        answer, reasoning = "".join(self._answer), "".join(self._reasoning)
        self._answer.clear()
        self._reasoning.clear()
        return answer, reasoning

    def _text(self, text: str) -> None:
        if not text:
            return
        state = self._state
        if state == _HEADER:
            if len(self._part_text) < _HEADER_KEPT:
                self._part_text += text[:_HEADER_KEPT]
            return
        if state == _BETWEEN:
            if text.isspace():
                self._gap += text
                return
            text, self._gap = self._gap + text, ""
            self._state = state = _ANSWER
        where = 0 if state == _ANSWER else 1
        out = self._answer if where == 0 else self._reasoning
        if self._apart[where]:
            self._apart[where] = False
            if self._wrote[where]:
                out.append("\n")
        self._wrote[where] = True
        out.append(text)

    def _tag(self, tag: str) -> None:
        if tag in _ENDS:
            self._state, self._gap = _BETWEEN, ""
        elif tag == MESSAGE:
            if self._state == _HEADER:
                self._close_part()
            to_reasoning = self._recipient or self._channel == "analysis"
            self._state = _REASONING if to_reasoning else _ANSWER
            self._apart[1 if to_reasoning else 0] = True
            self._channel, self._recipient = "", False
        else:  # <|start|>, <|channel|>, <|constrain|>: a header, or its next part
            if self._state == _HEADER:
                self._close_part()
            else:
                self._channel, self._recipient = "", False
            self._state, self._gap = _HEADER, ""
            self._part, self._part_text = tag, ""

    def _close_part(self) -> None:
        text = self._part_text
        if "to=" in text and self._part in (START, CHANNEL):
            self._recipient = True
        if self._part == CHANNEL:
            words = text.split()
            self._channel = words[0] if words else ""
        self._part, self._part_text = "", ""
