"""``/upstream/MODEL/PATH`` against a real gateway and a real llama-server: the engine's own
surface (its health, slots, root, native completion, streamed), started on demand, for
admin keys only; its status passes as it is; the gateway's credentials stay behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import access_keys, gemma_model, stub_log, stub_model, write_config

pytestmark = pytest.mark.e2e
ADMIN, USER = "sk-upstream-admin", "sk-upstream-user"


def test_an_engine_s_own_surface_through_the_gateway(serve, gemma: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models = (
        gemma_model("gemma", gemma)
        + stub_model("stub")
        + ("  far:\n    engine: remote\n    url: http://127.0.0.1:9/v1\n")
    )
    config = write_config(tmp_path, models)
    config.write_text(
        config.read_text()
        + access_keys(("ops", ADMIN, "scopes: [admin, user]"), ("app", USER, "scopes: [user]")),
        encoding="utf-8",
    )
    gw = serve(config)
    gw.key = ADMIN  # for gw.admin and gw.model
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
    user = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {USER}"}, timeout=30)

    denied = user.get("/upstream/gemma/health")
    assert denied.status_code == 403 and "lacks the 'admin' scope" in denied.text
    assert gw.admin("GET", "/admin/models").json()["models"][0]["state"] == "stopped"

    health = admin.get("/upstream/gemma/health")  # starts it, as a request would
    assert health.status_code == 200 and health.json()["status"] == "ok"
    slots = admin.get("/upstream/gemma/slots")
    assert slots.status_code == 200 and isinstance(slots.json(), list) and slots.json()
    metrics = admin.get("/upstream/gemma/metrics")  # not enabled (--metrics): its own answer
    assert metrics.status_code == 501, metrics.text

    moved = admin.get("/upstream/gemma")
    assert moved.status_code == 308 and moved.headers["location"] == "/upstream/gemma/"
    # Its root (the web UI where llama-server is built with it; this build answers 404):
    # what the engine says, as it says it.
    root = gw.model("gemma")["upstream"].removesuffix("/v1") + "/"
    direct, page = httpx.get(root, timeout=10), admin.get("/upstream/gemma/")
    assert (page.status_code, page.content) == (direct.status_code, direct.content)
    assert page.headers["content-type"] == direct.headers["content-type"]

    said = admin.post("/upstream/gemma/completion", json={"prompt": "Hi", "n_predict": 4})
    assert said.status_code == 200 and "content" in said.json()
    with admin.stream(
        "POST", "/upstream/gemma/completion", json={"prompt": "Hi", "n_predict": 4, "stream": True}
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert streamed.status_code == 200 and len(lines) >= 2
    assert gw.model("gemma")["in_flight"] == 0  # every place went back

    # The gateway's key and the console's cookie are the gateway's: the engine sees neither.
    relayed = admin.post(
        "/upstream/stub/v1/chat/completions",
        json={"model": "stub", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Cookie": "modelyard_session=secret"},
    )
    assert relayed.status_code == 200
    [record] = stub_log(gw, "stub")["requests"]
    assert "authorization" not in record and record["cookie"] is None

    for path, status, why in [
        ("/upstream/nothing/health", 404, "names no model"),
        ("/upstream/far/v1/models", 400, "is a remote API"),
    ]:
        answer = admin.get(path)
        assert answer.status_code == status and why in answer.text, (path, answer.text)
