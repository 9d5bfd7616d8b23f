"""Each state file's schema version, and the steps that bring an older file forward.

A file's version is SQLite's ``PRAGMA user_version``: the number of steps applied to it.
Step ``n`` brings version ``n`` to ``n + 1``, in one transaction with the new version, so
a file is never left between two versions. The first step of each file is its schema as
it was before versions were kept: ``CREATE ... IF NOT EXISTS`` and the columns added
since, so a file of any earlier release, or a new empty one, comes to the same version 1.
A file of a newer release (a higher version than this one knows) is refused, never
opened: this release cannot know what the newer one wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from modelyard import __version__

Step = Callable[[sqlite3.Connection], None]


class NewerSchema(Exception):
    """A state file written by a newer release of modelyard."""


def version_of(db: sqlite3.Connection) -> int:
    """The file's schema version (0: one from before versions were kept, or a new file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, steps: Sequence[Step], path: Path) -> int:
    """Bring ``db`` (the file at ``path``) forward to ``len(steps)``; its version then.

    ``db`` must be in autocommit mode (``isolation_level=None``): each step runs in a
    transaction of its own with the version it reaches.
    """
    have = version_of(db)
    if have > len(steps):
        raise NewerSchema(
            f"{path} has schema version {have}, written by a newer modelyard; this one "
            f"({__version__}) knows up to {len(steps)}: upgrade modelyard to open it"
        )
    for version in range(have, len(steps)):
        db.execute("BEGIN IMMEDIATE")  # one writer: two processes never both migrate
        try:
            if version_of(db) == version:  # another process may have just done it
                steps[version](db)
                db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return len(steps)


def script(sql: str) -> Step:
    """A step that runs ``sql``, statement by statement, inside the step's transaction
    (``executescript`` would commit it first)."""

    def run(db: sqlite3.Connection) -> None:
        for statement in _statements(sql):
            db.execute(statement)

    return run


def added_columns(table: str, columns: dict[str, str]) -> Step:
    """A step that adds the ``columns`` (name → type) ``table`` lacks."""

    def run(db: sqlite3.Connection) -> None:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    return run


def both(*steps: Step) -> Step:
    """One step made of several, in order."""

    def run(db: sqlite3.Connection) -> None:
        for step in steps:
            step(db)

    return run


def _statements(sql: str) -> list[str]:
    """``sql``'s statements, split at each ``;`` where SQLite says one is complete (a ``;``
    in a string or in a trigger's body does not end one)."""
    found, start = [], 0
    for end, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : end + 1]):
            found.append(sql[start : end + 1].strip())
            start = end + 1
    rest = sql[start:].strip()
    return [s for s in [*found, rest] if s.strip(" ;\n") and not _comment_only(s)]


def _comment_only(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())
