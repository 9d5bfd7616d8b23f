"""Cutting a reply into sentences as it streams, to speak each one as soon as it is whole.

Pure: no I/O. A sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by white space, or at
a line break (a list item, a heading); the text after the last cut waits for more. What a
voice should not read aloud goes: Markdown's marks (``**``, ``#``, `````, list bullets), and
code blocks, which are skipped whole ("code follows" is no sentence to hear).
"""

from __future__ import annotations

import re

_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_MARKS = re.compile(r"(\*\*|__|[*_`#>]|^\s*[-+]\s+|^\s*\d+[.)]\s+)", re.MULTILINE)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # [text](url) → text
_SPACE = re.compile(r"\s+")
_FENCE = "```"
LONGEST = 400  # characters: a "sentence" past this is cut at a space (no punctuation came)


def speakable(text: str) -> str:
    """``text`` as a voice should read it: Markdown's marks out, white space single."""
    text = _LINK.sub(r"\1", text)
    return _SPACE.sub(" ", _MARKS.sub("", text)).strip()


class SentenceCutter:
    """Feed the reply's text as it comes; take the whole sentences it holds so far."""

    def __init__(self) -> None:
        self._text = ""
        self._in_code = False

    def feed(self, text: str) -> list[str]:
        """The sentences completed by ``text`` (speakable, non-empty), in order."""
        self._text += text
        out: list[str] = []
        while True:
            if self._in_code:
                end = self._text.find(_FENCE)
                if end < 0:
                    # Keep only what could be the start of the closing fence.
                    self._text = self._text[-(len(_FENCE) - 1) :]
                    return out
                self._text = self._text[end + len(_FENCE) :]
                self._in_code = False
                continue
            fence = self._text.find(_FENCE)
            cut = _END.search(self._text, 0, fence if fence >= 0 else len(self._text))
            if cut is not None:
                self._take(self._text[: cut.start()], out)
                self._text = self._text[cut.end() :]
                continue
            if fence >= 0:
                self._take(self._text[:fence], out)
                self._text = self._text[fence + len(_FENCE) :]
                self._in_code = True
                continue
            if len(self._text) > LONGEST:
                space = self._text.rfind(" ", 0, LONGEST)
                at = space if space > 0 else LONGEST
                self._take(self._text[:at], out)
                self._text = self._text[at:]
                continue
            return out

    def end(self) -> list[str]:
        """What is left once the reply is over: its last sentence, if any."""
        out: list[str] = []
        if not self._in_code:
            self._take(self._text, out)
        self._text, self._in_code = "", False
        return out

    @staticmethod
    def _take(text: str, out: list[str]) -> None:
        said = speakable(text)
        if any(c.isalnum() for c in said):
            out.append(said)
