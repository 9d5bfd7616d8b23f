"""The web console in a real browser: Debian's chromium driven by Playwright, against a real
gateway with real llama-server engines (and tests/slow_upstream.py where an answer must be
exactly known).

One open gateway (loopback, no keys: the console shows chat and control) serves the module:
``gemma-a`` (llama-server, the streaming and Stop test), ``tiny`` (the same file with a
256-token window, for the context meter), ``html`` (answers with HTML and a script, for the
XSS test), ``slowstart`` (a server that takes two seconds to come up, for the loading
progress). The sign-in tests use a second gateway with keys.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from tests.conftest import (
    SLOW_UPSTREAM,
    ServedGateway,
    access_keys,
    alive,
    free_port,
    stub_model,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

HOSTILE = (
    'Hello <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> '
    '<a href="javascript:window.__xss=3">link</a>\n\n```python\nprint("hi")\n```\n'
)
USER_KEY, ADMIN_KEY = "sk-console-user", "sk-console-admin"


def _start(config: Path) -> ServedGateway:
    log = config.parent / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    gw = ServedGateway(proc, f"http://{yaml.safe_load(config.read_text())['listen']}", config, log)
    wait_healthy(gw.url, proc, lambda: log.read_text())
    return gw


def _stop(gw: ServedGateway) -> None:
    engines = gw.engines()
    gw.proc.terminate()
    gw.proc.wait(60)
    deadline = time.monotonic() + 15
    while [pid for pid in engines if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in engines if alive(pid)], "an engine outlived the gateway"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "hostile.txt").write_text(HOSTILE, encoding="utf-8")
    slow = f"sleep 2; exec {sys.executable} {SLOW_UPSTREAM} --port {{port}}"
    config = tmp / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        "nodes:\n  local:\n    modes: {open: open, off: {kind: drained, stop_models: true}}\n"
        "models:\n"
        f"  gemma-a:\n    engine: llama.cpp\n    weights: {gemma}\n    context: 2048\n"
        "    args: [--threads, '2']\n"
        f"  tiny:\n    engine: llama.cpp\n    weights: {gemma}\n    context: 256\n"
        "    args: [--threads, '2']\n"
        + stub_model("html", "--reply", f"'@{tmp / 'hostile.txt'}'")
        + f"  slowstart:\n    engine: command\n    command: [sh, -c, '{slow}']\n",
        encoding="utf-8",
    )
    gateway = _start(config)
    yield gateway
    _stop(gateway)


def _chat(page: Page, gw: ServedGateway, model: str) -> None:
    page.goto(gw.url + "/")
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Model").select_option(model)


def _answer(page: Page) -> Any:
    return page.locator(".message.assistant .body").last


def _conversation(gw: ServedGateway, page: Page) -> dict[str, Any]:
    found = re.search(r"#/chat/([^/]+)$", page.url)
    assert found, page.url
    return httpx.get(f"{gw.url}/console/api/conversations/{found[1]}", timeout=10).json()


def test_a_streamed_answer_appears_token_by_token_and_stop_idles_the_engine(
    page: Page, gw: ServedGateway
) -> None:
    _chat(page, gw, "gemma-a")
    page.get_by_role("textbox", name="Message", exact=True).fill(
        "Once upon a time, in a land of dragons,"
    )
    page.get_by_role("button", name="Send").click()
    seen: list[int] = []
    deadline = time.monotonic() + 120  # a cold start of llama-server first
    while len(set(seen)) < 4:
        text = _answer(page).inner_text() if _answer(page).count() else ""
        if text.strip():
            seen.append(len(text))
        assert time.monotonic() < deadline, f"the answer did not grow: {seen}"
        time.sleep(0.05)

    stop = page.get_by_role("button", name="Stop")
    stop.click()
    slots_url = gw.model("gemma-a")["upstream"].removesuffix("/v1") + "/slots"
    stopped = time.monotonic()
    # No max_tokens: left alone, gemma (a base model) goes on until an end token or until
    # its window of 1024 is full; Stop ends it within moments (3 s: a loaded CI machine).
    while any(s.get("is_processing") for s in httpx.get(slots_url, timeout=5).json()):
        assert time.monotonic() - stopped < 3.0, "llama-server still generates 3 s after Stop"
        time.sleep(0.05)
    expect(page.get_by_role("button", name="Send")).to_be_visible()

    # The gateway kept what was received, marked as stopped.
    deadline = time.monotonic() + 10
    while True:
        messages = _conversation(gw, page)["messages"]
        if (
            messages
            and messages[-1]["role"] == "assistant"
            and messages[-1]["status"] != "streaming"
        ):
            break
        assert time.monotonic() < deadline, messages
        time.sleep(0.1)
    assert messages[-1]["status"] == "stopped" and messages[-1]["content"].strip()
    assert messages[-2]["role"] == "user"


def test_html_in_an_answer_is_shown_never_run(page: Page, gw: ServedGateway) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _chat(page, gw, "html")
    page.get_by_role("textbox", name="Message", exact=True).fill("show me")
    page.get_by_role("button", name="Send").click()
    expect(_answer(page)).to_contain_text("print")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert page.evaluate("window.__xss") is None
    assert page.locator(".message.assistant script").count() == 0
    for handler in page.locator(".message.assistant img").evaluate_all(
        "els => els.map(e => e.getAttribute('onerror'))"
    ):
        assert handler is None
    hrefs = page.locator(".message.assistant a").evaluate_all("els => els.map(e => e.href)")
    assert not [h for h in hrefs if h.startswith("javascript:")]
    # Code is highlighted and can be copied.
    expect(page.locator(".message.assistant pre code.hljs")).to_have_count(1)
    expect(page.get_by_role("button", name="Copy code")).to_be_visible()
    assert not errors, errors


def test_the_meter_warns_then_shows_the_refusal(page: Page, gw: ServedGateway) -> None:
    _chat(page, gw, "tiny")  # a 256-token window: warns above 154, refused above 192
    meter = page.get_by_role("meter", name="Context used")
    page.get_by_role("textbox", name="Message", exact=True).fill("word " * 20)
    expect(meter).to_have_attribute("data-state", "ok")
    page.get_by_role("textbox", name="Message", exact=True).fill("x" * 480)  # about 164 tokens
    expect(meter).to_have_attribute("data-state", "warn")
    expect(page.locator(".meter-text")).to_contain_text("nearing the limit")
    page.get_by_role("textbox", name="Message", exact=True).fill("x" * 600)  # about 204 tokens
    expect(meter).to_have_attribute("data-state", "over")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").first).to_contain_text("Refused", timeout=60_000)
    expect(page.get_by_role("status").first).to_contain_text("context")


def test_a_cold_model_shows_its_loading_progress(page: Page, gw: ServedGateway) -> None:
    # One start first, so the gateway knows how long slowstart takes to load.
    assert gw.admin("POST", "/admin/models/slowstart/start").status_code == 200
    assert gw.admin("POST", "/admin/models/slowstart/stop").status_code == 200
    _chat(page, gw, "slowstart")
    expect(page.get_by_label("Model")).to_contain_text("slowstart — stopped")
    page.get_by_role("textbox", name="Message", exact=True).fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").first).to_contain_text(
        re.compile(r"loading… \d+ %"), timeout=10_000
    )
    expect(_answer(page)).to_contain_text("t7", timeout=30_000)


def test_control_starts_and_stops_a_model_and_changes_a_mode(page: Page, gw: ServedGateway) -> None:
    assert gw.admin("POST", "/admin/models/html/stop").status_code == 200  # others ran it
    page.goto(gw.url + "/#/control/models")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="html"))
    expect(row.get_by_role("cell").nth(0)).to_have_text("stopped")
    before = set(gw.engines())
    row.get_by_role("button", name="Start", exact=True).click()
    expect(row.get_by_role("cell").nth(0)).to_have_text("ready", timeout=30_000)
    started = set(gw.engines()) - before
    assert len(started) == 1, "Start ran no process"
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="html"))
    row.get_by_role("button", name="Stop", exact=True).click()
    expect(row.get_by_role("cell").nth(0)).to_have_text("stopped", timeout=30_000)
    deadline = time.monotonic() + 15
    while [pid for pid in started if alive(pid)]:
        assert time.monotonic() < deadline, "Stop left the engine running"
        time.sleep(0.1)

    page.get_by_role("link", name="Nodes").click()
    page.get_by_role("group", name="Modes of local").get_by_role("button", name="off").click()
    deadline = time.monotonic() + 10
    while gw.admin("GET", "/admin/nodes").json()["nodes"][0]["mode"] != "off":
        assert time.monotonic() < deadline, "the mode did not change"
        time.sleep(0.1)
    page.get_by_role("group", name="Modes of local").get_by_role("button", name="open").click()
    deadline = time.monotonic() + 10
    while gw.admin("GET", "/admin/nodes").json()["nodes"][0]["mode"] != "open":
        assert time.monotonic() < deadline, "the mode did not change back"
        time.sleep(0.1)


def test_a_config_that_does_not_validate_is_shown_where_it_is_wrong(
    page: Page, gw: ServedGateway
) -> None:
    good = gw.config.read_text(encoding="utf-8")
    lines = good.splitlines()
    bad_line = next(i for i, line in enumerate(lines) if "engine: llama.cpp" in line)
    lines[bad_line] = lines[bad_line].replace("llama.cpp", "llama.ccp")
    try:
        page.goto(gw.url + "/#/control/config")
        expect(page.get_by_role("list", name=re.compile("Config file"))).to_contain_text("gemma-a")
        gw.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        page.get_by_role("button", name="Reload config").click()
        marked = page.locator(".config-text li.bad")
        expect(marked).to_have_count(1)
        expect(marked).to_contain_text("engine must be one of")
        assert marked.evaluate("li => [...li.parentNode.children].indexOf(li)") == bad_line
        expect(page.locator(".reload-result")).to_contain_text("the running one stays")
    finally:
        gw.config.write_text(good, encoding="utf-8")
    assert gw.admin("GET", "/admin/models").status_code == 200  # the old config still runs


def test_a_phone_sized_page_has_every_control(browser: Browser, gw: ServedGateway) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(gw.url + "/")
        for role, name in (("button", "New chat"), ("button", "Send"), ("combobox", "Model")):
            control = page.get_by_role(role, name=name)  # type: ignore[arg-type]
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, (name, box)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways: {width}px"
    finally:
        context.close()


def test_a_conversation_survives_a_gateway_restart(
    page: Page, gw: ServedGateway, tmp_path: Path
) -> None:
    _chat(page, gw, "html")
    page.get_by_role("textbox", name="Message", exact=True).fill("remember me")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(_answer(page)).to_contain_text("print")
    url = page.url
    _stop(gw)
    restarted = _start(gw.config)
    gw.proc = restarted.proc  # the module's fixture stops this one at the end
    page.goto(url)
    page.reload()
    expect(page.locator(".message.user .body").last).to_have_text("remember me")
    expect(_answer(page)).to_contain_text("print")
    expect(page.get_by_role("link", name="remember me", exact=True)).to_be_visible()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("console-keys")
    config = tmp / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp / 'state'}\n"
        + access_keys(
            ("alice", USER_KEY, "scopes: [user]"), ("ops", ADMIN_KEY, "scopes: [user, admin]")
        )
        + "models:\n"
        + stub_model("stub"),
        encoding="utf-8",
    )
    gateway = _start(config)
    yield gateway
    _stop(gateway)


def _sign_in(page: Page, gw: ServedGateway, key: str) -> None:
    page.goto(gw.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()


def test_a_user_key_sees_chat_only_and_control_refuses_it(
    page: Page, guarded: ServedGateway
) -> None:
    page.goto(guarded.url + "/")
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).not_to_be_empty()
    _sign_in(page, guarded, USER_KEY)
    expect(page.get_by_role("link", name="Control")).to_have_count(0)
    assert "sk-" not in page.evaluate(
        "JSON.stringify(localStorage) + document.cookie + location.href"
    )
    page.goto(guarded.url + "/#/control/models")
    expect(page.get_by_role("button", name="New chat")).to_be_visible()  # chat, not control
    status = page.evaluate("fetch('/admin/status').then(r => r.status)")
    assert status == 403
    stop = page.evaluate("fetch('/admin/models/stub/stop', {method: 'POST'}).then(r => r.status)")
    assert stop == 403


def test_an_admin_key_sees_control(page: Page, guarded: ServedGateway) -> None:
    _sign_in(page, guarded, ADMIN_KEY)
    page.get_by_role("link", name="Control").click()
    expect(page.get_by_role("rowheader", name="stub")).to_be_visible()
    page.get_by_role("button", name=re.compile("Sign out")).click()
    expect(page.get_by_label("API key")).to_be_visible()
