"""Conversations: the console's chat history, kept on the server per API key.

SQLite in WAL mode, a file of its own in the state directory (``conversations.db``). One
thread of its own does every read and write, in the order they were asked: the event loop
never waits on the disk, and a write queued without waiting (an answer saved as its stream
ends) is in before any later read. Search is SQLite's FTS5 over titles and message text
(prefixes of words), or ``LIKE`` where this Python's SQLite lacks FTS5 (``fts``).

A conversation belongs to its owner, the name of the API key that made it ("" when the
gateway has no keys); every call names the owner, and another owner's conversation is
never found. Bounds: a title of ``TITLE_MAX`` characters, a message (and a system prompt) of
``max_message`` bytes (``access.max_body``), pages of ``PAGE_MAX`` conversations,
``MAX_CONVERSATIONS`` per owner and ``MAX_MESSAGES`` per conversation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from modelyard.errors import Code, Refusal
from modelyard.migrations import migrate, script

TITLE_MAX = 200  # characters
NAME_MAX = 200  # characters of a model's name
PAGE_MAX = 200  # conversations in one page of the list
QUERY_MAX = 200  # characters of a search
MAX_CONVERSATIONS = 5_000  # per owner
MAX_MESSAGES = 2_000  # per conversation
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what an id may be: anything else is not found
STATUSES = ("complete", "stopped", "cut", "error")  # how an assistant's answer ended
log = logging.getLogger("modelyard.conversations")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    system TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_owner ON conversations(owner, updated, id);
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    reasoning TEXT,
    at REAL NOT NULL,
    model TEXT,
    node TEXT,
    decision TEXT,
    ttft_s REAL,
    tokens_out INTEGER,
    tokens_per_s REAL,
    status TEXT,
    error TEXT,
    UNIQUE (conversation, seq)
);
"""
# External-content indexes kept by triggers: the text is stored once, in the tables above
# (a message's text never changes: it is added, or deleted).
STEPS = (script(SCHEMA),)  # the file's schema, version by version (migrations.py)
FTS = """
CREATE VIRTUAL TABLE IF NOT EXISTS titles_fts USING fts5(title, content='conversations',
    content_rowid='n');
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages',
    content_rowid='n');
CREATE TRIGGER IF NOT EXISTS conversations_ai AFTER INSERT ON conversations BEGIN
    INSERT INTO titles_fts(rowid, title) VALUES (new.n, new.title); END;
CREATE TRIGGER IF NOT EXISTS conversations_ad AFTER DELETE ON conversations BEGIN
    INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.n, old.title); END;
CREATE TRIGGER IF NOT EXISTS conversations_au AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.n, old.title);
    INSERT INTO titles_fts(rowid, title) VALUES (new.n, new.title); END;
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.n, new.content); END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.n, old.content);
    END;
"""
_CONVERSATION = ("id", "title", "model", "system", "params", "created", "updated")
_MESSAGE = ("seq", "role", "content", "reasoning", "at", "model", "node", "decision",
            "ttft_s", "tokens_out", "tokens_per_s", "status", "error")  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Params(_Strict):
    """What the console sends with each request of the conversation; unset: the model's own."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class NewConversation(_Strict):
    title: str = Field("", max_length=TITLE_MAX)
    model: str = Field("", max_length=NAME_MAX)
    system: str = ""
    params: Params = Field(default_factory=Params)


class ConversationPatch(_Strict):
    """Fields to change; ``params``, given, replaces the conversation's (as a form saves)."""

    title: str | None = Field(None, max_length=TITLE_MAX)
    model: str | None = Field(None, max_length=NAME_MAX)
    system: str | None = None
    params: Params | None = None


class NewMessage(_Strict):
    role: Literal["user", "system"]
    content: str


@dataclass
class Answer:
    """An assistant's answer as it was received: what it said and how it ended."""

    content: str = ""
    reasoning: str | None = None
    model: str | None = None
    node: str | None = None
    decision: str | None = None
    ttft_s: float | None = None
    tokens_out: int | None = None
    tokens_per_s: float | None = None
    status: str = "complete"  # one of STATUSES
    error: str | None = None


class Rejected(Exception):
    """A change the store refuses: ``refusal`` says why, for the client."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def clip(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (never mid-character); was it cut?"""
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


_WORD = re.compile(r"[^\W_]+")  # a word as FTS5's unicode61 tokenizer sees one


def _like(q: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", q) + "%"


P = ParamSpec("P")
R = TypeVar("R")


def _threaded(
    fn: Callable[Concatenate[Conversations, P], R],
) -> Callable[Concatenate[Conversations, P], Coroutine[Any, Any, R]]:
    """The blocking method ``fn`` as a coroutine run in the store's own thread."""

    async def run(self: Conversations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(fn, self, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    run.__doc__ = fn.__doc__
    return run


class Conversations:
    """The conversations of every owner, in one SQLite file."""

    def __init__(self, path: Path, max_message: int, fts: bool | None = None) -> None:
        self.path = path
        self.max_message = max_message
        self.fts = fts  # None: FTS5 if this SQLite has it (known once open)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="modelyard-conversations")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the conversations store is not open")
        return self._db

    @_threaded
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        migrate(db, STEPS, self.path)  # first: a newer release's file is left as it is
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if self.fts is not False:
            try:
                db.executescript(FTS)
                self.fts = True
            except sqlite3.OperationalError:  # no FTS5 in this SQLite: LIKE does the search
                self.fts = False
        self._db = db

    async def close(self) -> None:
        """Write what is queued, then close; later calls fail."""
        if self._db is not None:
            await self._close()
        self._thread.shutdown(wait=False)

    @_threaded
    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def queue(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` in the store's thread, after what is queued; not waited for."""

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("a conversation write failed")

        try:
            self._thread.submit(run)
        except RuntimeError:  # closed: the gateway is stopping
            log.warning("the conversations store is closed: a write is lost")

    # --- conversations ---

    @_threaded
    def create(self, owner: str, new: NewConversation) -> dict[str, Any]:
        self._bounded(new.system, "system")
        (count,) = self.db.execute(
            "SELECT COUNT(*) FROM conversations WHERE owner = ?", (owner,)
        ).fetchone()
        if count >= MAX_CONVERSATIONS:
            why = f"this key keeps {MAX_CONVERSATIONS} conversations, the most allowed"
            raise Rejected(Refusal(Code.CONVERSATION_LIMIT, f"{why}; delete some first"))
        now = time.time()
        id = secrets.token_urlsafe(12)
        params = new.params.model_dump_json(exclude_none=True)
        self.db.execute(
            "INSERT INTO conversations(id, owner, title, model, system, params, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (id, owner, new.title, new.model, new.system, params, now, now),
        )
        return self._conversation(owner, id, messages=False) or {}

    @_threaded
    def page(
        self, owner: str, q: str = "", limit: int = 50, before: tuple[float, str] | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of ``owner``'s conversations, last updated first, and the next page's
        cursor (None: no more). ``q``: only those whose title or a message matches."""
        where: list[str] = ["c.owner = ?"]
        args: list[object] = [owner]
        if before is not None:
            where.append("(c.updated < ? OR (c.updated = ? AND c.id < ?))")
            args += [before[0], before[0], before[1]]
        # Every word of ``q`` in the title or in a message: as a prefix of a word (FTS5), or
        # anywhere (LIKE: also where FTS5 sees no word, e.g. "%" or "_").
        words = _WORD.findall(q)[:16] if self.fts else []
        for word in words:
            where.append(
                "(c.n IN (SELECT rowid FROM titles_fts WHERE titles_fts MATCH ?) OR c.id IN "
                "(SELECT m.conversation FROM messages_fts f JOIN messages m ON m.n = f.rowid "
                "WHERE messages_fts MATCH ?))"
            )
            args += [f'"{word}"*'] * 2
        for part in [] if words else q.split()[:16]:
            where.append(
                "(c.title LIKE ? ESCAPE '\\' OR c.id IN (SELECT conversation FROM messages "
                "WHERE content LIKE ? ESCAPE '\\'))"
            )
            args += [_like(part)] * 2
        rows = self.db.execute(
            f"SELECT {', '.join('c.' + c for c in _CONVERSATION)}, (SELECT COUNT(*) FROM "
            f"messages m WHERE m.conversation = c.id) FROM conversations c WHERE "
            f"{' AND '.join(where)} ORDER BY c.updated DESC, c.id DESC LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        page = [_conversation_of(row) for row in rows[:limit]]
        more = len(rows) > limit
        return page, f"{page[-1]['updated']!r},{page[-1]['id']}" if more else None

    @_threaded
    def get(self, owner: str, id: str, after: int = 0) -> dict[str, Any] | None:
        """The conversation with its messages (those after seq ``after``), or None if
        ``owner`` has none of that id."""
        return self._conversation(owner, id, after=after)

    @_threaded
    def update(self, owner: str, id: str, patch: ConversationPatch) -> dict[str, Any] | None:
        if not self._owns(owner, id):
            return None
        changes: dict[str, Any] = {}
        for name in ("title", "model", "system"):
            if getattr(patch, name) is not None:
                changes[name] = getattr(patch, name)
        if "system" in changes:
            self._bounded(changes["system"], "system")
        if patch.params is not None:
            changes["params"] = patch.params.model_dump_json(exclude_none=True)
        changes["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self.db.execute(
            f"UPDATE conversations SET {assignments} WHERE owner = ? AND id = ?",
            (*changes.values(), owner, id),
        )
        return self._conversation(owner, id, messages=False)

    @_threaded
    def delete(self, owner: str, id: str) -> bool:
        if not self._owns(owner, id):
            return False
        with _transaction(self.db):
            self.db.execute("DELETE FROM messages WHERE conversation = ?", (id,))
            self.db.execute("DELETE FROM conversations WHERE id = ?", (id,))
        return True

    # --- messages ---

    @_threaded
    def append(self, owner: str, id: str, new: NewMessage) -> dict[str, Any] | None:
        """Add a user or system message at the end; None if ``owner`` has no such
        conversation."""
        if not self._owns(owner, id):
            return None
        self._bounded(new.content, "content")
        self._room(id)
        seq = self._insert(id, new.role, new.content)
        return self._message(id, seq)

    @_threaded
    def begin(self, owner: str, id: str, user: str | None) -> bool:
        """A chat request captured into conversation ``id``: whether ``owner`` has it, and
        ``user`` (the request's last user message) stored unless it is the last message."""
        if not self._owns(owner, id):
            return False
        self._room(id)
        if user is not None:
            user, _ = clip(user, self.max_message)
            last = self.db.execute(
                "SELECT role, content FROM messages WHERE conversation = ? "
                "ORDER BY seq DESC LIMIT 1",
                (id,),
            ).fetchone()
            if last is None or tuple(last) != ("user", user):
                self._insert(id, "user", user)
        return True

    def save_answer(self, id: str, answer: Answer) -> None:
        """Store an assistant's answer at the end of ``id`` (blocking: call it through
        ``queue``); dropped if the conversation was deleted meanwhile."""
        if self.db.execute("SELECT 1 FROM conversations WHERE id = ?", (id,)).fetchone() is None:
            return
        content, cut = clip(answer.content, self.max_message)
        reasoning = answer.reasoning
        if reasoning is not None:
            reasoning, cut_too = clip(reasoning, self.max_message)
            cut = cut or cut_too
        if cut and answer.error is None:
            answer.error = "the answer is kept cut to access.max_body bytes"
        fields = {**asdict(answer), "content": content, "reasoning": reasoning}
        self._insert(id, "assistant", content, fields)

    @_threaded
    def cut(self, owner: str, id: str, first: int) -> int | None:
        """Delete messages from ``first`` (a seq) on; how many, or None if not ``owner``'s."""
        if not self._owns(owner, id):
            return None
        with _transaction(self.db):
            gone = self.db.execute(
                "DELETE FROM messages WHERE conversation = ? AND seq >= ?", (id, first)
            ).rowcount
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), id))
        return int(gone)

    # --- inside the thread ---

    def _owns(self, owner: str, id: str) -> bool:
        found = self.db.execute(
            "SELECT 1 FROM conversations WHERE owner = ? AND id = ?", (owner, id)
        ).fetchone()
        return found is not None

    def _bounded(self, text: str, field: str) -> None:
        if len(text) > self.max_message // 4 and len(text.encode()) > self.max_message:
            why = f"`{field}` is over {self.max_message} bytes (access.max_body)"
            raise Rejected(Refusal(Code.INVALID_REQUEST, why, param=field))

    def _room(self, id: str) -> None:
        (count,) = self.db.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation = ?", (id,)
        ).fetchone()
        if count >= MAX_MESSAGES:
            why = f"the conversation has {MAX_MESSAGES} messages, the most allowed"
            raise Rejected(Refusal(Code.CONVERSATION_LIMIT, f"{why}; start another"))

    def _insert(
        self, id: str, role: str, content: str, answer: dict[str, Any] | None = None
    ) -> int:
        """Append a message; the conversation's first user message titles an untitled one."""
        now = time.time()
        extra = {k: v for k, v in (answer or {}).items() if k != "content"}
        columns = ("conversation", "seq", "role", "content", "at", *extra)
        with _transaction(self.db):
            (seq,) = self.db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation = ?", (id,)
            ).fetchone()
            self.db.execute(
                f"INSERT INTO messages({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                (id, seq, role, content, now, *extra.values()),
            )
            title = " ".join(content.split())[:80] if role == "user" else ""
            self.db.execute(
                "UPDATE conversations SET updated = ?, "
                "title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (now, title, id),
            )
        return int(seq)

    def _message(self, id: str, seq: int) -> dict[str, Any]:
        row = self.db.execute(
            f"SELECT {', '.join(_MESSAGE)} FROM messages WHERE conversation = ? AND seq = ?",
            (id, seq),
        ).fetchone()
        return dict(zip(_MESSAGE, row, strict=True))

    def _conversation(
        self, owner: str, id: str, messages: bool = True, after: int = 0
    ) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {', '.join(_CONVERSATION)}, (SELECT COUNT(*) FROM messages "
            "WHERE conversation = ?) FROM conversations WHERE owner = ? AND id = ?",
            (id, owner, id),
        ).fetchone()
        if row is None:
            return None
        found = _conversation_of(row)
        if messages:
            rows = self.db.execute(
                f"SELECT {', '.join(_MESSAGE)} FROM messages WHERE conversation = ? AND seq > ? "
                "ORDER BY seq",
                (id, after),
            ).fetchall()
            found["messages"] = [dict(zip(_MESSAGE, r, strict=True)) for r in rows]
        return found


def _conversation_of(row: tuple[Any, ...]) -> dict[str, Any]:
    found = dict(zip(_CONVERSATION, row[:-1], strict=True))
    found["params"] = orjson.loads(found["params"])
    found["message_count"] = row[-1]
    return found


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on an error (the connection is autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
