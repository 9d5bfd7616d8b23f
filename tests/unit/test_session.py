"""Console sessions: the store's rules, the sign-in limiter, the cookie, the cross-site rule,
the guard that joins them, and the console's files (no processes: the gateway's e2e test
is tests/e2e/test_console_session_e2e.py)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from modelyard.config import Access, ApiKey
from modelyard.gateway import session
from modelyard.gateway.access import AccessGuard
from modelyard.gateway.session import (
    IDLE,
    LIFETIME,
    PER_KEY,
    Failures,
    SessionStore,
    cross_site,
    session_token,
)

USER = ApiKey(name="user", key="user-key")
ADMIN = ApiKey(name="admin", key="admin-key", scopes=["user", "admin"])
KEYS = {k.digest(): k for k in (USER, ADMIN)}
SITE = "http://testserver"  # TestClient's own origin


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SessionStore:
    return SessionStore(tmp_path / "sessions.db", clock)


def test_a_session_is_its_key_and_only_the_tokens_digest_is_kept(
    store: SessionStore, tmp_path: Path
) -> None:
    token = store.create(USER.digest())
    assert len(token) == 43 and store.key_of(token, KEYS) is USER
    rows = sqlite3.connect(tmp_path / "sessions.db").execute("SELECT * FROM sessions").fetchall()
    assert rows[0][0] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(rows) and (tmp_path / "sessions.db").stat().st_mode & 0o077 == 0
    assert store.key_of(token[:-1] + ("A" if token[-1] != "A" else "B"), KEYS) is None


def test_sessions_survive_a_restart_with_their_last_use(
    store: SessionStore, tmp_path: Path, clock: Clock
) -> None:
    token = store.create(ADMIN.digest())
    clock.now += 30  # used within the minute: written at close
    assert store.key_of(token, KEYS) is ADMIN
    store.close()
    again = SessionStore(tmp_path / "sessions.db", clock)
    assert again.key_of(token, KEYS) is ADMIN
    assert again._live[hashlib.sha256(token.encode()).hexdigest()].last_used == clock.now


def test_idle_and_lifetime_expiry(store: SessionStore, clock: Clock) -> None:
    idle = store.create(USER.digest())
    busy = store.create(USER.digest())
    for _ in range(5):  # used every 6 days: never idle 7, but 30 days in all end it
        clock.now += IDLE - 86400
        assert store.key_of(busy, KEYS) is USER
    assert store.key_of(idle, KEYS) is None and len(store) == 1
    clock.now += LIFETIME - 5 * (IDLE - 86400) + 1
    assert store.key_of(busy, KEYS) is None and len(store) == 0


def test_expired_sessions_are_dropped_when_the_file_is_opened(
    store: SessionStore, tmp_path: Path, clock: Clock
) -> None:
    store.create(USER.digest())
    store.close()
    clock.now += IDLE + 1
    assert len(SessionStore(tmp_path / "sessions.db", clock)) == 0


def test_a_key_no_longer_configured_ends_its_sessions(store: SessionStore) -> None:
    token = store.create(ADMIN.digest())
    assert store.key_of(token, {USER.digest(): USER}) is None
    assert store.key_of(token, KEYS) is None  # gone for good, even if the key comes back


def test_sign_out_and_a_bound_on_sessions_per_key(store: SessionStore, clock: Clock) -> None:
    first = store.create(USER.digest())
    store.end(first)
    assert store.key_of(first, KEYS) is None
    tokens = []
    for _ in range(PER_KEY + 3):
        clock.now += 1
        tokens.append(store.create(USER.digest()))
    other = store.create(ADMIN.digest())
    assert len(store) == PER_KEY + 1 and store.key_of(other, KEYS) is ADMIN
    assert [store.key_of(t, KEYS) for t in tokens[:3]] == [None] * 3
    assert store.key_of(tokens[-1], KEYS) is USER


def test_a_damaged_file_is_moved_aside(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "sessions.db").write_bytes(b"not a database at all" * 100)
    store = SessionStore(tmp_path / "sessions.db", clock)
    assert store.key_of(store.create(USER.digest()), KEYS) is USER
    assert len(list(tmp_path.glob("sessions.db.damaged-*"))) == 1


def test_failed_sign_ins_wait_per_address(clock: Clock) -> None:
    failures = Failures(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert failures.wait("10.0.0.1") == 0
        failures.failed("10.0.0.1")
    assert failures.wait("10.0.0.1") == 60 and failures.wait("10.0.0.2") == 0
    clock.now += 59.5
    assert failures.wait("10.0.0.1") == pytest.approx(0.5)
    clock.now += 1
    assert failures.wait("10.0.0.1") == 0
    for host in ("1", "2", "3"):  # one IPv6 /64 is one client
        failures.failed(f"2001:db8::{host}")
    assert failures.wait("2001:db8::ffff") > 0 and failures.wait("2001:db8:0:1::1") == 0
    small = Failures(limit=1, window=60, clock=clock, most=2)
    for n in range(5):
        small.failed(f"10.0.1.{n}")
    assert len(small._seen) == 2 and small.wait("10.0.1.4") > 0


@pytest.mark.parametrize(
    ("cookies", "expected"),
    [
        ([], None),
        ([b"a=1; b=2"], None),
        ([b"a=1; modelyard_session=tok; b=2"], "tok"),
        ([b"modelyard_session=tok", b"other=1; modelyard_session=tok"], "tok"),
        ([b"modelyard_session=tok; modelyard_session=planted"], ""),
        ([b"modelyard_session=x" * 5000], "x" + "modelyard_session=x" * 4999),
        ([b"xmodelyard_session=tok"], None),
    ],
)
def test_the_session_cookie(cookies: list[bytes], expected: str | None) -> None:
    headers = [(b"host", b"h"), *((b"cookie", c) for c in cookies)]
    assert session_token(headers) == expected


@pytest.mark.parametrize(
    ("scheme", "headers", "strict", "refused"),
    [
        ("http", {"host": "gw:8000", "origin": "http://gw:8000"}, True, False),
        ("http", {"host": "GW:8000", "origin": "http://gw:8000"}, True, False),
        ("http", {"host": "gw", "origin": "http://gw:80"}, True, False),
        ("https", {"host": "gw:443", "origin": "https://gw"}, True, False),
        ("http", {"host": "[::1]:8000", "origin": "http://[::1]:8000"}, True, False),
        ("http", {"host": "gw:8000", "origin": "http://gw:3000"}, True, True),
        ("http", {"host": "gw:8000", "origin": "https://gw:8000"}, True, True),
        ("http", {"host": "gw:8000", "origin": "http://evil:8000"}, True, True),
        ("http", {"host": "gw:8000", "origin": "null"}, True, True),
        ("http", {"origin": "null"}, False, True),
        ("http", {"host": "gw:8000", "origin": "http://gw:8000/x"}, True, True),
        ("http", {"host": "gw:8000", "sec-fetch-site": "same-origin"}, True, False),
        ("http", {"host": "gw:8000", "sec-fetch-site": "same-site"}, True, True),
        ("http", {"host": "gw:8000"}, True, True),  # a cookie needs proof
        ("http", {"host": "gw:8000"}, False, False),  # no browser said anything
        ("http", {"host": "gw:8000", "sec-fetch-site": "cross-site"}, False, True),
        ("http", {"host": "gw:8000", "sec-fetch-site": "none"}, False, False),
        ("http", {"host": "gw:8000", "origin": "http://evil"}, False, True),
    ],
)
def test_cross_site(scheme: str, headers: dict[str, str], strict: bool, refused: bool) -> None:
    assert cross_site({"scheme": scheme}, headers, strict) is refused


@pytest.mark.parametrize(
    ("accept", "takes"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip; q=0", False),
        ("*", True),
        ("*;q=0, gzip", True),
        ("identity", False),
        ("", False),
        ("gzip;q=nope", False),
    ],
)
def test_accept_encoding(accept: str, takes: bool) -> None:
    assert session._takes_gzip(accept) is takes


def _guarded(store: SessionStore, access: Access) -> TestClient:
    async def echo(request: Request) -> Response:
        key = request.scope.get("state", {}).get("api_key")
        return JSONResponse({"key": key.name if key else None})

    app = Starlette(
        routes=[
            Route("/v1/models", echo, methods=["GET", "POST"]),
            Route("/admin/x", echo, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/console/me", echo),
            Route("/", echo),
        ]
    )
    return TestClient(AccessGuard(app, access, sessions=store))


def test_the_guard_takes_a_cookie_as_its_key(store: SessionStore) -> None:
    client = _guarded(store, Access(keys=[USER, ADMIN]))
    user, admin = store.create(USER.digest()), store.create(ADMIN.digest())

    def ask(method: str, path: str, token: str | None, **headers: str) -> tuple[int, object]:
        cookies = {"Cookie": f"modelyard_session={token}"} if token else {}
        got = client.request(method, path, headers={**cookies, **headers})
        body = got.json()
        return got.status_code, body["key"] if "key" in body else body["error"]["code"]

    assert ask("GET", "/v1/models", user) == (200, "user")
    assert ask("GET", "/admin/x", user) == (403, "insufficient_scope")
    assert ask("GET", "/admin/x", admin) == (200, "admin")
    assert ask("GET", "/console/me", admin) == (200, "admin")
    assert ask("GET", "/v1/models", "forged" + user[6:]) == (401, "missing_api_key")
    assert ask("GET", "/v1/models", None) == (401, "missing_api_key")
    assert ask("GET", "/", None) == (200, None)  # the page: no key, no data
    # Unsafe methods need proof of the same origin; safe ones do not.
    for method in ("POST", "PUT", "DELETE"):
        assert ask(method, "/admin/x", admin) == (403, "cross_site_request")
        assert ask(method, "/admin/x", admin, Origin="http://evil.test") == (
            403,
            "cross_site_request",
        )
        assert ask(method, "/admin/x", admin, Origin=SITE) == (200, "admin")
        assert ask(method, "/admin/x", admin, **{"Sec-Fetch-Site": "same-origin"}) == (
            200,
            "admin",
        )
        assert ask(method, "/admin/x", admin, **{"Sec-Fetch-Site": "same-site"})[0] == 403
    # A header wins over the cookie, and is checked as it always was: no falling back.
    assert ask("POST", "/admin/x", admin, Authorization="Bearer admin-key") == (200, "admin")
    assert ask("GET", "/admin/x", admin, Authorization="Bearer user-key")[0] == 403
    assert ask("GET", "/v1/models", admin, Authorization="Bearer wrong") == (
        401,
        "invalid_api_key",
    )
    assert ask("GET", "/v1/models", admin, **{"x-api-key": ""}) == (401, "missing_api_key")
    # Two different session cookies (one planted for a narrower path): neither counts.
    both = f"modelyard_session={user}; modelyard_session={admin}"
    assert client.get("/v1/models", headers={"Cookie": both}).status_code == 401


def test_with_no_keys_the_guard_is_open_but_refuses_other_sites_pages(
    store: SessionStore,
) -> None:
    client = _guarded(store, Access())
    assert client.post("/admin/x").status_code == 200  # an SDK, curl: no browser headers
    assert client.post("/admin/x", headers={"Origin": SITE}).status_code == 200
    assert client.get("/admin/x", headers={"Origin": "http://evil.test"}).status_code == 200
    for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = client.post("/admin/x", headers=headers)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cross_site_request"


async def test_the_console_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "static" / "sub").mkdir(parents=True)
    (tmp_path / "index.html").write_text("<main id=app></main>" * 50)
    (tmp_path / "static" / "app.js").write_text("export const x = 1;\n" * 50)
    (tmp_path / "static" / "font.woff2").write_bytes(b"\0" * 100)
    (tmp_path / "static" / ".hidden.js").write_text("secret")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "static" / "sub" / "link.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(session, "CONSOLE", tmp_path)
    monkeypatch.setattr(session, "STATIC", (tmp_path / "static").resolve())
    client = TestClient(Starlette(routes=session.routes[:2]))

    page = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200 and page.headers["content-encoding"] == "gzip"
    assert page.headers["content-security-policy"] == session.CSP
    assert page.headers["x-frame-options"] == "DENY" and page.text.startswith("<main")
    script = client.get("/console/static/app.js", headers={"Accept-Encoding": "identity"})
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "content-encoding" not in script.headers and script.headers["x-content-type-options"]
    cached = {"If-None-Match": script.headers["etag"], "Accept-Encoding": "identity"}
    again = client.get("/console/static/app.js", headers=cached)
    assert again.status_code == 304 and not again.content
    zipped = client.get("/console/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["etag"] != script.headers["etag"]
    font = client.get("/console/static/font.woff2", headers={"Accept-Encoding": "gzip"})
    assert font.headers["content-type"] == "font/woff2" and "content-encoding" not in font.headers
    assert zipped.headers["content-encoding"] == "gzip" and zipped.text == script.text
    for bad in ("/console/static/%2e%2e/secret.txt", "/console/static/..%2fsecret.txt"):
        assert client.get(bad).status_code == 404, bad  # decoded to "..": as below
    for path in (  # as the server decodes them: the client may not normalise "..", nor "//"
        "/console/static/../secret.txt",
        "/console/static/../../../../../../etc/passwd",
        "/console/static/sub/../../secret.txt",
        "/console/static//etc/passwd",
        "/console/static/.hidden.js",
        "/console/static/sub/link.txt",
        "/console/static/",
        "/console/static/sub",
        "/console/static/nope.js",
        "/console/static/a\x00b",
    ):
        status, headers = await _raw_get(client.app, path)
        assert status == 404 and headers["content-security-policy"] == session.CSP, path


async def _raw_get(app: ASGIApp, path: str) -> tuple[int, dict[str, str]]:
    """GET ``path`` exactly as given, past any client's normalisation: status and headers."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "scheme": "http",
        "server": ("testserver", 80),
        "http_version": "1.1",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]}
