"""A backup of a gateway's or an agent's state, taken and restored while it serves.

A backup is a tar file: ``manifest.json`` (what it is, the release and each file's schema
version, row counts and digest) and a copy of each state file made by SQLite's online
backup, which reads one consistent snapshot while the gateway goes on writing. The files:
``modelyard.db`` (instance events, routing decisions, node modes, the request log) and
``conversations.db``. Not the console's ``sessions.db``: a restored state signs its users
out rather than bring back their sign-ins.

``restore`` checks everything before it touches the state: a file that is not a modelyard
backup, that is damaged, or whose schema is newer than this release's, is refused and
nothing changes. Each copy is brought forward to this release's schema, then written into
the live file by SQLite's backup, a writer like any other (the gateway's own writes wait
for it or it waits for them). The engines a running gateway recorded stay recorded (they
are its processes now, not the backup's).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard import __version__, conversations, store
from modelyard.migrations import Step, migrate, version_of

FORMAT = "modelyard-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Each file a backup holds, with the steps of its schema (its version is their number).
FILES: dict[str, Sequence[Step]] = {
    "modelyard.db": store.STEPS,
    "conversations.db": conversations.STEPS,
}
LIVE_ONLY = {"modelyard.db": ("engines",)}  # tables of the running processes: kept as they are


class BackupError(Exception):
    """A backup cannot be taken, or a file cannot be restored: nothing was changed."""


@dataclass
class Copied:
    """One state file in a backup."""

    schema: int
    sha256: str
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """What a backup holds."""

    format: str
    format_version: int
    modelyard: str
    created: float
    files: dict[str, Copied]


def backup(state_dir: Path, target: Path) -> Manifest:
    """Copy the state files of ``state_dir`` into the tar file ``target`` (written whole,
    then moved in place: never a half-written backup)."""
    found = [name for name in FILES if (state_dir / name).is_file()]
    if not found:
        raise BackupError(f"no state to back up in {state_dir}: none of {', '.join(FILES)}")
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, Copied] = {}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".modelyard-backup-") as tmp:
        for name in found:
            copy = Path(tmp) / name
            source = sqlite3.connect(f"file:{state_dir / name}?mode=ro", uri=True)
            try:
                with sqlite3.connect(copy) as dest:
                    source.backup(dest)  # one read transaction: a consistent snapshot
                    files[name] = Copied(version_of(dest), "", _rows(dest))
                dest.close()
            finally:
                source.close()
            files[name].sha256 = _sha256(copy)
        manifest = Manifest(FORMAT, FORMAT_VERSION, __version__, time.time(), files)
        partial = Path(tmp) / "backup.tar"
        with tarfile.open(partial, "w") as tar:
            data = json.dumps(asdict(manifest), indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(manifest.created)
            tar.addfile(info, io.BytesIO(data))
            for name in found:
                tar.add(Path(tmp) / name, arcname=name)
        os.replace(partial, target)
    return manifest


def read_manifest(source: Path) -> Manifest:
    """``source``'s manifest, or BackupError if it is not a modelyard backup."""
    not_ours = f"{source} is not a modelyard backup (a tar file written by `modelyard backup`)"
    try:
        with tarfile.open(source, "r:") as tar:
            info = tar.getmember(MANIFEST)
            member = tar.extractfile(info) if info.isfile() and info.size < 1 << 20 else None
            raw = json.loads(member.read()) if member is not None else None
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{not_ours}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BackupError(not_ours)
    if raw.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{source} is a backup of format {raw.get('format_version')!r} (modelyard "
            f"{raw.get('modelyard')}); this one reads format {FORMAT_VERSION}: upgrade modelyard"
        )
    try:
        files = {n: Copied(**f) for n, f in raw["files"].items() if n in FILES}
        return Manifest(FORMAT, FORMAT_VERSION, str(raw["modelyard"]), raw["created"], files)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{source}: its manifest is damaged: {exc}") from None


def restore(state_dir: Path, source: Path) -> Manifest:
    """Put the state of the backup ``source`` in ``state_dir``, once every file of it has
    been checked; raises BackupError, having changed nothing, if one cannot be."""
    manifest = read_manifest(source)
    if not manifest.files:
        raise BackupError(f"{source} holds no state file")
    state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=state_dir, prefix=".modelyard-restore-") as tmp:
        copies = {
            name: _checked(source, name, copied, Path(tmp))
            for name, copied in manifest.files.items()
        }
        for name, copy in copies.items():  # all checked: now write
            _write(copy, state_dir / name, LIVE_ONLY.get(name, ()))
    return manifest


def _checked(source: Path, name: str, copied: Copied, tmp: Path) -> Path:
    """``name`` from the backup, out in ``tmp``, checked and brought to this schema."""
    steps = FILES[name]
    if copied.schema > len(steps):
        raise BackupError(
            f"{source}: its {name} has schema version {copied.schema}, written by a newer "
            f"modelyard; this one ({__version__}) knows up to {len(steps)}: upgrade to restore it"
        )
    copy = tmp / name
    digest = hashlib.sha256()
    try:
        with tarfile.open(source, "r:") as tar:
            member = tar.getmember(name)
            data = tar.extractfile(member) if member.isfile() else None
            if data is None:
                raise BackupError(f"{source}: {name} is not a file")
            with copy.open("wb") as out:
                while chunk := data.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except (OSError, tarfile.TarError, KeyError) as exc:
        raise BackupError(f"{source}: {name} cannot be read: {exc}") from None
    if digest.hexdigest() != copied.sha256:
        raise BackupError(f"{source}: {name} is damaged (its digest differs from the manifest's)")
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()
        if ok != ("ok",):
            raise BackupError(f"{source}: {name} is damaged: {ok}")
        migrate(db, steps, copy)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source}: {name} is not a readable SQLite file: {exc}") from None
    finally:
        db.close()
    return copy


def _write(copy: Path, live: Path, kept: Sequence[str]) -> None:
    """Write ``copy`` over the ``live`` file with SQLite's backup, keeping ``kept``
    tables' live rows."""
    target = sqlite3.connect(live, isolation_level=None, timeout=30)
    source = sqlite3.connect(copy, isolation_level=None)
    try:
        target.execute("PRAGMA journal_mode=WAL")
        for table in kept:
            has = target.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            rows = target.execute(f"SELECT * FROM {table}").fetchall() if has else []
            source.execute(f"DELETE FROM {table}")
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                source.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        source.backup(target)
    finally:
        source.close()
        target.close()


def _rows(db: sqlite3.Connection) -> dict[str, int]:
    tables = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND sql NOT LIKE 'CREATE VIRTUAL%' AND name NOT LIKE '%fts%' ORDER BY name"
    ).fetchall()
    return {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def summary(manifest: Manifest) -> dict[str, Any]:
    """The manifest as JSON-ready data."""
    return asdict(manifest)
