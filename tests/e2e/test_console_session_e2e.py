"""The console's sign-in against a real gateway: a key becomes a session cookie; the cookie
is that key (scopes and all); its changes must come from the gateway's own page; sessions
outlive a restart but not their key; and the console's files are served safely.

Each test starts its own gateway (``modelyard serve``) with a user and an admin key, a
stub model (tests/slow_upstream.py) and a remote one that is never asked.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServedGateway, access_keys, stub_model, write_config

pytestmark = pytest.mark.e2e

USER, ADMIN = "my-console-user-key", "my-console-admin-key"
KEYS = access_keys(("user", USER, ""), ("admin", ADMIN, "scopes: [user, admin]"))
MODELS = stub_model("a") + '  b: {engine: remote, url: "http://127.0.0.1:9/v1"}\n'
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def gw(serve, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    return serve(write_config(tmp_path, MODELS, KEYS))  # type: ignore[no-any-return]


def sign_in(gw: ServedGateway, key: str, **headers: str) -> httpx.Response:
    return httpx.post(gw.url + "/console/login", json={"key": key}, headers=headers, timeout=30)


def cookie_of(signed_in: httpx.Response) -> dict[str, str]:
    token = signed_in.cookies["modelyard_session"]
    return {"Cookie": f"modelyard_session={token}"}


def call(gw: ServedGateway, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, gw.url + path, timeout=60, **kw)  # type: ignore[arg-type]


def code(answer: httpx.Response) -> tuple[int, str | None]:
    return answer.status_code, answer.json()["error"]["code"]


def raw_get(gw: ServedGateway, target: str) -> bytes:
    """A request line exactly as given (clients normalise "..")."""
    host = gw.url.removeprefix("http://")
    name, port = host.rsplit(":", 1)
    with socket.create_connection((name, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_key_signs_in_once_and_the_cookie_is_that_key(gw: ServedGateway) -> None:
    # Wrong, malformed or missing keys: the same 401, nothing said about which.
    wrong = [
        sign_in(gw, "nope"),
        httpx.post(gw.url + "/console/login", json={"key": 5}, timeout=30),
        httpx.post(gw.url + "/console/login", content=b"not json", timeout=30),
        httpx.post(gw.url + "/console/login", json={"key": "x" * 5000}, timeout=30),
    ]
    assert {(a.status_code, a.json()["error"]["message"]) for a in wrong} == {
        (401, "this key is not known")
    }
    assert "set-cookie" not in wrong[0].headers

    user = sign_in(gw, USER)
    assert user.status_code == 200
    assert user.json() == {"key": "user", "scopes": ["user"], "admin": False, "open": False}
    set_cookie = user.headers["set-cookie"]
    assert set_cookie.startswith("modelyard_session=")
    attributes = {a.strip().split("=")[0] for a in set_cookie.split(";")[1:]}
    assert {"HttpOnly", "SameSite", "Path"} <= attributes and "Secure" not in attributes
    assert "SameSite=Strict" in set_cookie and "Path=/;" in set_cookie
    assert USER not in set_cookie and user.headers["cache-control"] == "no-store"
    as_user = cookie_of(user)

    # The cookie alone: the user key's API, not the admin's.
    assert call(gw, "GET", "/v1/models", headers=as_user).status_code == 200
    me = call(gw, "GET", "/console/me", headers=as_user).json()
    assert me == {"key": "user", "scopes": ["user"], "admin": False, "open": False}
    assert code(call(gw, "GET", "/admin/status", headers=as_user)) == (403, "insufficient_scope")
    same = {**as_user, "Origin": gw.url}
    stop = call(gw, "POST", "/admin/models/a/stop", headers=same)
    assert code(stop) == (403, "insufficient_scope")  # whatever the console shows
    nobody = call(gw, "GET", "/console/me")
    assert code(nobody) == (401, "missing_api_key") and nobody.headers["x-frame-options"]

    # A chat through the fast lane, from the console's own page; not from another's.
    chat = call(gw, "POST", "/v1/chat/completions", headers=same, json=CHAT)
    assert chat.status_code == 200, chat.text
    for other in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}, {}):
        refused = call(gw, "POST", "/v1/chat/completions", headers={**as_user, **other}, json=CHAT)
        assert code(refused) == (403, "cross_site_request"), other

    # Behind a TLS proxy on this host (uvicorn trusts loopback's X-Forwarded-Proto): Secure.
    secure = sign_in(gw, USER, **{"X-Forwarded-Proto": "https"})
    assert "; Secure" in secure.headers["set-cookie"]


def test_admin_actions_by_cookie_need_the_gateways_own_origin(gw: ServedGateway) -> None:
    as_admin = cookie_of(sign_in(gw, ADMIN))
    assert call(gw, "GET", "/admin/status", headers=as_admin).status_code == 200
    stop = "/admin/models/a/stop"
    for foreign in ("http://evil.test", gw.url.replace("127.0.0.1", "localhost"), "null"):
        refused = call(gw, "POST", stop, headers={**as_admin, "Origin": foreign})
        assert code(refused) == (403, "cross_site_request"), foreign
    assert code(call(gw, "POST", stop, headers=as_admin)) == (403, "cross_site_request")
    # A cross-site HTML form: a "simple" request, no preflight; the cookie alone is no proof.
    form = {**as_admin, "Content-Type": "application/x-www-form-urlencoded"}
    mode = call(gw, "PUT", "/admin/nodes/local/mode", headers=form, content=b"mode=drained")
    assert code(mode) == (403, "cross_site_request")
    assert call(gw, "GET", "/admin/nodes", headers=as_admin).json()["nodes"][0]["mode"] == "open"

    assert call(gw, "POST", stop, headers={**as_admin, "Origin": gw.url}).status_code == 200
    fetch = {**as_admin, "Sec-Fetch-Site": "same-origin"}
    assert call(gw, "POST", stop, headers=fetch).status_code == 200
    # A key in a header is as it always was: no Origin needed, and it wins over a cookie.
    bearer = {"Authorization": f"Bearer {ADMIN}", "Origin": "http://evil.test"}
    assert call(gw, "POST", stop, headers=bearer).status_code == 200
    mixed = {**as_admin, "Authorization": f"Bearer {USER}"}
    assert code(call(gw, "GET", "/admin/status", headers=mixed)) == (403, "insufficient_scope")
    wrong = {**as_admin, "Authorization": "Bearer wrong"}
    assert code(call(gw, "GET", "/admin/status", headers=wrong)) == (401, "invalid_api_key")

    # Forged, huge and planted cookies are no session.
    for cookie in (
        "modelyard_session=" + "A" * 43,
        "modelyard_session=" + "A" * 40_000,
        f"{as_admin['Cookie']}; modelyard_session={'B' * 43}",
        as_admin["Cookie"].replace("modelyard_session", "modelyard_session_"),
    ):
        assert call(gw, "GET", "/admin/status", headers={"Cookie": cookie}).status_code == 401

    # Sign out: from the page itself; the cookie is cleared and its session is over.
    assert code(call(gw, "POST", "/console/logout", headers=as_admin)) == (
        403,
        "cross_site_request",
    )
    out = call(gw, "POST", "/console/logout", headers={**as_admin, "Origin": gw.url})
    assert out.status_code == 200 and "Max-Age=0" in out.headers["set-cookie"]
    assert code(call(gw, "GET", "/admin/status", headers=as_admin)) == (401, "missing_api_key")


def test_failed_sign_ins_are_rate_limited_per_address(gw: ServedGateway) -> None:
    for _ in range(10):
        assert sign_in(gw, "guess").status_code == 401
    limited = sign_in(gw, "guess")
    assert code(limited) == (429, "rate_limited") and int(limited.headers["Retry-After"]) >= 1
    assert sign_in(gw, ADMIN).status_code == 429  # even the right key waits: no oracle
    assert call(gw, "GET", "/v1/models", headers={"Authorization": f"Bearer {USER}"}).is_success


def test_a_session_survives_a_restart_but_not_its_key(
    serve,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, MODELS, KEYS)
    first: ServedGateway = serve(config)
    as_admin = cookie_of(sign_in(first, ADMIN))
    as_user = cookie_of(sign_in(first, USER))
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(60)  # uvicorn shuts down, then ends by the signal it caught
    assert (tmp_path / "state" / "sessions.db").stat().st_mode & 0o077 == 0

    second: ServedGateway = serve(config)
    assert call(second, "GET", "/admin/status", headers=as_admin).status_code == 200
    assert call(second, "GET", "/v1/models", headers=as_user).status_code == 200
    second.proc.send_signal(signal.SIGTERM)
    second.proc.wait(60)

    # The user key leaves the config: its sessions end with it, the admin's go on.
    config.write_text(config.read_text().replace(KEYS, access_keys(("admin", ADMIN, ""))))
    third: ServedGateway = serve(config)
    assert code(call(third, "GET", "/v1/models", headers=as_user)) == (401, "missing_api_key")
    assert call(third, "GET", "/v1/models", headers=as_admin).status_code == 200


def test_the_console_files_are_served_safely(gw: ServedGateway) -> None:
    page = call(gw, "GET", "/")  # no key needed: the page holds no data
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>modelyard</title>" in page.text and 'id="app"' in page.text
    assert page.headers["content-security-policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-encoding"] == "gzip"  # httpx asks for it, and decodes it

    script = call(gw, "GET", "/console/static/app.js", headers={"Accept-Encoding": "identity"})
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "content-encoding" not in script.headers and script.headers["etag"]
    assert script.headers["content-security-policy"] and script.headers["cache-control"]
    cached = {"If-None-Match": script.headers["etag"], "Accept-Encoding": "identity"}
    assert call(gw, "GET", "/console/static/app.js", headers=cached).status_code == 304
    style = call(gw, "GET", "/console/static/app.css", headers={"Accept-Encoding": "gzip"})
    assert style.headers["content-type"] == "text/css; charset=utf-8"

    # The API is not compressed, whatever the client accepts.
    models = call(gw, "GET", "/v1/models", headers={"Authorization": f"Bearer {USER}"})
    assert "content-encoding" not in models.headers

    config = Path(gw.config).name
    for target in (
        f"/console/static/../../{config}",
        "/console/static/../../../../../../../../etc/passwd",
        f"/console/static/%2e%2e/%2e%2e/{config}",
        "/console/static/..%2f..%2f..%2fpyproject.toml",
        "/console/static//etc/passwd",
        "/console/static/../index.html/../../session.py",
        "/console/static/",
        "/console/static/nope.js",
    ):
        answer = raw_get(gw, target)
        assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:200])
        assert b"root:" not in answer and b"listen:" not in answer


def test_with_no_keys_the_console_is_open_but_not_to_other_sites(
    serve,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    gw: ServedGateway = serve(write_config(tmp_path, MODELS))
    me = call(gw, "GET", "/console/me").json()
    assert me["open"] is True and me["admin"] is True
    assert sign_in(gw, "anything").json()["open"] is True
    stop = "/admin/models/a/stop"
    assert call(gw, "POST", stop).status_code == 200  # curl, an SDK: as before
    assert call(gw, "POST", stop, headers={"Origin": gw.url}).status_code == 200
    refused = call(gw, "POST", stop, headers={"Origin": "http://evil.test"})
    assert code(refused) == (403, "cross_site_request")
    assert os.path.exists(tmp_path / "state" / "sessions.db")
