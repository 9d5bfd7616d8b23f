"""The console's engine log in a real browser (Debian's chromium driven by Playwright): it
follows the log live through a restart, on one stream whatever the redraws, and lets go
of it when paused or left (``log_followers`` in ``GET /admin/status``)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import SLOW_UPSTREAM, ServedGateway, stub_model, write_config

pytestmark = pytest.mark.e2e


def _wait_followers(gw: ServedGateway, want: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (now := gw.admin("GET", "/admin/status").json()["log_followers"]) != want:
        assert time.monotonic() < deadline, f"log_followers stayed {now}, not {want}"
        time.sleep(0.1)


def test_the_log_view_follows_a_restart_on_one_stream_and_closes_when_left(
    serve: Any, tmp_path: Path, page: Page
) -> None:
    gw: ServedGateway = serve(write_config(tmp_path, stub_model("slow")))
    first = gw.admin("POST", "/admin/models/slow/start").json()["pid"]
    page.goto(gw.url + "/#/control/models")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="slow"))
    row.get_by_role("link", name="Log").click()
    log = page.get_by_label("Engine log of slow")
    expect(log).to_contain_text(f"(pid {first})")
    _wait_followers(gw, 1)

    # The restart's events redraw the models table: the log stays, on the same stream.
    second = gw.admin("POST", "/admin/models/slow/restart").json()["pid"]
    expect(log).to_contain_text(f"(pid {second})")
    expect(log).to_contain_text(f"(pid {first})")  # the lines before are still there
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="slow"))
    expect(row.get_by_role("cell").nth(0)).to_have_text("ready")
    expect(page.get_by_label("Engine log of slow")).to_have_count(1)
    _wait_followers(gw, 1)

    page.get_by_role("button", name="Pause").click()
    _wait_followers(gw, 0)
    assert (log.text_content() or "").count("stopping: ") == 1  # the restart's
    gw.admin("POST", "/admin/models/slow/stop")
    time.sleep(0.5)
    assert (log.text_content() or "").count("stopping: ") == 1  # paused: nothing new shown
    page.get_by_role("button", name="Follow").click()
    twice = re.compile(r"stopping: [\s\S]*stopping: ")  # following again: the tail, then live
    expect(log).to_contain_text(twice)
    _wait_followers(gw, 1)

    page.get_by_role("link", name="Nodes").click()  # the view is left: its stream closes
    _wait_followers(gw, 0)


def test_the_log_scrolls_along_only_while_the_reader_is_at_the_bottom(
    serve: Any, tmp_path: Path, page: Page
) -> None:
    chatty = "for i in $(seq 1 60); do echo boot line $i; done; "
    chatty += f"exec {sys.executable} {SLOW_UPSTREAM} --port {{port}}"
    models = f"  chatty:\n    engine: command\n    command: [sh, -c, '{chatty}']\n"
    gw: ServedGateway = serve(write_config(tmp_path, models))
    gw.admin("POST", "/admin/models/chatty/start")
    page.goto(gw.url + "/#/control/models/chatty")
    log = page.get_by_label("Engine log of chatty")
    expect(log).to_contain_text("boot line 60")
    at_bottom = "pre => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8"
    page.wait_for_function(f"() => ({at_bottom})(document.querySelector('pre.log'))")

    # Scrolled up to read: a restart's 60 new lines (and the table's redraws) leave it there.
    log.evaluate("pre => { pre.scrollTop = 40; }")
    page.wait_for_timeout(200)
    gw.admin("POST", "/admin/models/chatty/restart")
    expect(log).to_contain_text(re.compile(r"boot line 60[\s\S]*boot line 60"))
    page.wait_for_timeout(500)
    assert log.evaluate("pre => pre.scrollTop") == 40

    # Back at the bottom: it follows the new lines down.
    log.evaluate("pre => { pre.scrollTop = pre.scrollHeight; }")
    page.wait_for_timeout(200)
    gw.admin("POST", "/admin/models/chatty/restart")
    expect(log).to_contain_text(re.compile(r"(boot line 60[\s\S]*){3}"))
    page.wait_for_function(f"() => ({at_bottom})(document.querySelector('pre.log'))")
