"""The web console's sign-in and files: a key once, then a session cookie; ``/`` and its assets.

``POST /console/login`` takes ``{"key": KEY}``, checks it as the access guard does (by its
SHA-256) and answers with a cookie holding a random 32-byte token. Only the token's SHA-256
is kept, with the key's digest and two times, in ``sessions.db`` in the state directory: a
session outlives a restart, ends after 7 idle days or 30 days in all, and with its key once
that key is no longer in the config. Failed sign-ins are counted per client address: past
10 a minute, that address waits (429). The guard (``gateway/access.py``) turns a valid cookie
into its key and refuses a cookie's unsafe request from another origin (:func:`cross_site`).

The console's files (``src/modelyard/console/``) are served here, each with a strict
Content-Security-Policy, an ETag and, for text, gzip when the client takes it: compressed
once per file, so the API never passes through a compressing middleware.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import sqlite3
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from modelyard.config import ApiKey
from modelyard.errors import BodyStalled, BodyTooLarge, Code, Refusal
from modelyard.gateway.body import read_body
from modelyard.gateway.errors import openai_error
from modelyard.migrations import migrate, script

if TYPE_CHECKING:
    from modelyard.gateway.state import Gateway

log = logging.getLogger("modelyard.gateway")

COOKIE = "modelyard_session"
IDLE = 7 * 86400.0  # seconds a session may go unused
LIFETIME = 30 * 86400.0  # seconds a session lasts at most
PER_KEY = 50  # sessions one key may hold; a new sign-in past this ends its least recent one
TOUCH = 60.0  # a session's last use is written at most this often
FAILURES, WINDOW = 10, 60.0  # failed sign-ins one address may make in WINDOW seconds
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_DEFAULT_PORT = {"http": "80", "https": "443"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
)
"""
STEPS = (script(SCHEMA),)  # the file's schema, version by version (migrations.py)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Session:
    key_sha256: str
    created: float
    last_used: float
    saved: float  # last_used as the file has it

    def expired(self, now: float) -> bool:
        return now - self.last_used > IDLE or now - self.created > LIFETIME


class Failures:
    """Failed sign-ins per client address (IPv6 by its /64): past ``limit`` in ``window``
    seconds, that address waits until the oldest of them is ``window`` old."""

    def __init__(
        self,
        limit: int = FAILURES,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        most: int = 10_000,
    ) -> None:
        self.limit, self.window, self.clock, self.most = limit, window, clock, most
        self._seen: dict[str, deque[float]] = {}

    def wait(self, address: str) -> float:
        """Seconds ``address`` must wait before it may try again (0: now)."""
        times = self._seen.get(_network(address))
        if not times:
            return 0.0
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def failed(self, address: str) -> None:
        now = self.clock()
        if len(self._seen) >= self.most:  # bounded: forget the quiet ones, else the oldest
            for stale in [a for a, t in self._seen.items() if not t or t[-1] <= now - self.window]:
                del self._seen[stale]
            while len(self._seen) >= self.most:
                del self._seen[next(iter(self._seen))]
        times = self._seen.setdefault(_network(address), deque(maxlen=self.limit))
        times.append(now)


def _network(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SessionStore:
    """The sessions, all in memory and in ``path`` (SQLite, WAL) so that they survive a
    restart; the file is written on sign-in, sign-out, and at most once a minute per
    session in use."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # readable by the gateway's user only
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.clock = clock
        self.failures = Failures()
        try:
            self.db = self._connect(path)
        except sqlite3.DatabaseError as exc:  # a damaged file: sessions are worth no outage
            aside = f"{path.name}.damaged-{int(time.time())}"
            log.warning("console sessions: %s is unreadable (%s); moved to %s", path, exc, aside)
            for part in ("", "-wal", "-shm"):  # its log too: never replayed into a new file
                if path.with_name(path.name + part).exists():
                    path.with_name(path.name + part).rename(path.with_name(aside + part))
            self.db = self._connect(path)
        now = clock()
        rows = self.db.execute("SELECT * FROM sessions").fetchall()
        self._live = {t: Session(k, c, u, u) for t, k, c, u in rows}
        for token in [t for t, s in self._live.items() if s.expired(now)]:
            self._drop(token)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        migrate(db, STEPS, path)  # first: a newer release's file is left as it is
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def __len__(self) -> int:
        return len(self._live)

    def create(self, key_sha256: str) -> str:
        """A new session for the key with this digest: its token, which is kept nowhere."""
        now = self.clock()
        mine = sorted((s.last_used, t) for t, s in self._live.items() if s.key_sha256 == key_sha256)
        for _, token in mine[: max(0, len(mine) - PER_KEY + 1)]:
            self._drop(token)
        token = secrets.token_urlsafe(32)
        digest = _sha(token)
        self._live[digest] = Session(key_sha256, now, now, now)
        self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (digest, key_sha256, now, now))
        return token

    def key_of(self, token: str, keys: Mapping[str, ApiKey]) -> ApiKey | None:
        """The key (of ``keys``, digest → key) whose session ``token`` is, now used; None for
        no such session, an expired one or one of a key no longer there (those end here)."""
        if not _TOKEN.fullmatch(token):
            return None
        digest = _sha(token)
        session = self._live.get(digest)
        if session is None:
            return None
        now = self.clock()
        key = keys.get(session.key_sha256)
        if key is None or session.expired(now):
            self._drop(digest)
            return None
        session.last_used = max(session.last_used, now)
        if now - session.saved >= TOUCH:
            session.saved = now
            self.db.execute(
                "UPDATE sessions SET last_used = ? WHERE token_sha256 = ?", (now, digest)
            )
        return key

    def end(self, token: str) -> None:
        """Sign out: the session of ``token`` is gone."""
        if _TOKEN.fullmatch(token):
            self._drop(_sha(token))

    def _drop(self, digest: str) -> None:
        self._live.pop(digest, None)
        self.db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))

    def close(self) -> None:
        for digest, s in self._live.items():
            if s.last_used != s.saved:
                self.db.execute(
                    "UPDATE sessions SET last_used = ? WHERE token_sha256 = ?",
                    (s.last_used, digest),
                )
        self.db.close()


def session_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session cookie's value: None if there is none, "" (no session) if several differ
    (one planted for a narrower path by a page on another port of this host, say)."""
    found: str | None = None
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            cookie, eq, given = part.strip().partition(b"=")
            if eq and cookie == COOKIE.encode():
                token = given.strip().decode("latin-1")
                found = token if found in (None, token) else ""
    return found


def cross_site(scope: Scope, headers: Mapping[str, str], strict: bool = True) -> bool:
    """Whether a request may come from a page of another origin.

    ``strict`` (a cookie's request): it must show it is same-origin, by an ``Origin`` equal
    to its own (scheme, ``Host``, port), or with no ``Origin`` by ``Sec-Fetch-Site:
    same-origin``. Not strict: refused only when a browser says so (a client that is no
    browser sends neither header).
    """
    origin = headers.get("origin")
    if origin is not None:
        own = _own_origin(scope, headers.get("host"))
        return own is None or _origin(origin) != own
    site = headers.get("sec-fetch-site")
    if strict:
        return site != "same-origin"
    return site is not None and site not in ("same-origin", "none")


def _origin(origin: str) -> str | None:
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORT or not rest or "/" in rest:
        return None  # "null", a path, another scheme: no origin of ours
    return f"{scheme}://{_with_port(rest, scheme)}"


def _own_origin(scope: Scope, host: str | None) -> str | None:
    scheme = str(scope.get("scheme", "http"))
    if not host or scheme not in _DEFAULT_PORT:
        return None
    return f"{scheme}://{_with_port(host.strip().lower(), scheme)}"


def _with_port(host: str, scheme: str) -> str:
    name, _, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
    if name and port.isdigit():
        return host
    return f"{host}:{_DEFAULT_PORT[scheme]}"


# The console's pages and JSON: no inline script or style, nothing from elsewhere, no frame.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(
        body, status, headers={**SECURITY, "Cache-Control": "no-store", **(headers or {})}
    )


def _refuse(refusal: Refusal) -> Response:
    response = openai_error(refusal)
    response.headers.update({**SECURITY, "Cache-Control": "no-store"})
    return response


def who(key: ApiKey | None) -> dict[str, Any]:
    """What ``/console/me`` says of a key (None: an open gateway, no keys)."""
    if key is None:
        return {"key": None, "scopes": ["user", "admin"], "admin": True, "open": True}
    scopes = list(key.scopes)
    return {"key": key.name, "scopes": scopes, "admin": "admin" in scopes, "open": False}


def _cookie(request: Request, token: str, max_age: int) -> str:
    secure = "; Secure" if request.scope.get("scheme") == "https" else ""
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"


_CROSS = "a request from another site's page; the console signs in from its own page"


async def login(request: Request) -> Response:
    """``{"key": KEY}`` → the session cookie, and who the key is."""
    gw: Gateway = request.app.state.gateway
    if cross_site(request.scope, request.headers, strict=False):
        return _refuse(Refusal(Code.CROSS_SITE_REQUEST, _CROSS))
    keys = {key.digest(): key for key in gw.config.access.keys}
    if not keys:
        return _answer(who(None))
    client = request.scope.get("client")
    address = str(client[0]) if client else "?"
    sessions = gw.sessions
    wait = sessions.failures.wait(address)
    if wait > 0:
        retry = {"Retry-After": str(max(1, int(wait + 0.999)))}
        many = f"too many failed sign-ins from {address}; try again later"
        return _refuse(Refusal(Code.RATE_LIMITED, many, headers=retry))
    given = await _given_key(request, gw.config.access.body_timeout)
    key = keys.get(_sha(given)) if given else None
    if key is None:
        sessions.failures.failed(address)
        return _refuse(Refusal(Code.INVALID_API_KEY, "this key is not known"))
    token = sessions.create(key.digest())
    return _answer(who(key), headers={"Set-Cookie": _cookie(request, token, int(LIFETIME))})


async def _given_key(request: Request, idle: float) -> str | None:
    try:
        raw = await read_body(request.receive, idle)
    except (BodyStalled, BodyTooLarge, ClientDisconnect):
        return None
    try:
        data = orjson.loads(raw) if len(raw) <= 4096 else None
    except orjson.JSONDecodeError:
        return None
    key = data.get("key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and 0 < len(key) <= 1024 else None


async def logout(request: Request) -> Response:
    """End the cookie's session and clear the cookie."""
    gw: Gateway = request.app.state.gateway
    if cross_site(request.scope, request.headers):
        return _refuse(Refusal(Code.CROSS_SITE_REQUEST, _CROSS))
    token = session_token(request.scope["headers"])
    if token:
        gw.sessions.end(token)
    return _answer({"signed_out": True}, headers={"Set-Cookie": _cookie(request, "", 0)})


async def me(request: Request) -> Response:
    """Who the request's session (or key) is; the guard has answered 401 already if none."""
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    return _answer(who(key))


# The console's files.
CONSOLE = Path(__file__).resolve().parent.parent / "console"
STATIC = (CONSOLE / "static").resolve()
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".png": "image/png",
    ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon",
}
_TEXT = {".html", ".js", ".mjs", ".css", ".svg", ".json", ".map", ".txt"}


@dataclass(frozen=True)
class _File:
    stamp: tuple[int, int]  # mtime_ns, size: a changed file is read again
    body: bytes
    gzipped: bytes | None  # None: not text, or no smaller
    etag: str
    modified: str


_files: dict[Path, _File] = {}


def _load(path: Path) -> _File | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _files.get(path)
    if cached is not None and cached.stamp == stamp:
        return cached
    try:
        body = path.read_bytes()
    except OSError:
        return None
    packed = gzip.compress(body, 9, mtime=0) if path.suffix in _TEXT else None
    smaller = packed if packed is not None and len(packed) < len(body) else None
    etag, modified = hashlib.sha256(body).hexdigest()[:20], formatdate(st.st_mtime, usegmt=True)
    _files[path] = found = _File(stamp, body, smaller, etag, modified)
    return found


def _takes_gzip(accept: str) -> bool:
    """Whether ``Accept-Encoding`` takes gzip: named (or ``*``) and not with ``q=0``."""
    weights = {}
    for part in accept.lower().replace(" ", "").split(","):
        name, _, q = part.partition(";q=")
        try:
            weights[name.strip()] = float(q) if q else 1.0
        except ValueError:
            weights[name.strip()] = 0.0
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def serve_file(request: Request, path: Path) -> Response:
    """``path`` with its type, ETag (a 304 when the client has it) and gzip if taken."""
    found = _load(path)
    if found is None:
        return _refuse(Refusal(None, f"no such file: {request.url.path}", status=404))
    packed = found.gzipped if _takes_gzip(request.headers.get("accept-encoding", "")) else None
    etag = f'"{found.etag}-gz"' if packed is not None else f'"{found.etag}"'
    headers = {
        **SECURITY,
        "ETag": etag,
        "Last-Modified": found.modified,
        "Cache-Control": "no-cache",  # always asked again: a 304 while it has not changed
        "Vary": "Accept-Encoding",
    }
    asked = request.headers.get("if-none-match", "")
    if etag in (t.strip().removeprefix("W/") for t in asked.split(",")) or asked.strip() == "*":
        return Response(status_code=304, headers=headers)
    headers["Content-Type"] = _TYPES.get(path.suffix, "application/octet-stream")
    if packed is not None:
        headers["Content-Encoding"] = "gzip"
    return Response(packed if packed is not None else found.body, headers=headers)


async def index(request: Request) -> Response:
    return serve_file(request, CONSOLE / "index.html")


async def static(request: Request) -> Response:
    """A file under ``console/static``: nothing outside it, no hidden file."""
    asked: str = request.path_params["path"]
    try:
        path = (STATIC / asked).resolve()  # links followed: where it really is
        inside = path.relative_to(STATIC).parts
    except (OSError, ValueError, RuntimeError):  # outside, a NUL byte, a link loop
        inside = ()
    if not inside or any(p.startswith(".") for p in inside):
        path = STATIC / ".none"  # a 404 like any missing file
    return serve_file(request, path)


def is_public(path: str) -> bool:
    """Console paths that need no key: the pages hold no data; sign-in and out."""
    return path in ("/", "/console/login", "/console/logout") or path.startswith("/console/static/")


routes = [
    Route("/", index, methods=["GET"]),
    Route("/console/static/{path:path}", static, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", logout, methods=["POST"]),
    Route("/console/me", me, methods=["GET"]),
]
