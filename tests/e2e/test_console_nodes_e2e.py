"""The console's Nodes page in a real browser (Debian's chromium, Playwright): each
machine's CPU and RAM as text beside their charts, updated in place from the ``sample``
events, with no polling and without taking the focus from a button."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ServedGateway, free_port, stub_model

pytestmark = pytest.mark.e2e


@pytest.fixture
def gw(serve, tmp_path: Path) -> ServedGateway:  # type: ignore[no-untyped-def]
    config = tmp_path / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'state'}\n"
        "nodes:\n  local:\n    modes: {open: open, off: {kind: drained}}\n"
        f"models:\n{stub_model('slow')}",
        encoding="utf-8",
    )
    return serve(config)  # type: ignore[no-any-return]


def test_the_nodes_page_shows_cpu_and_ram_and_updates_them_in_place(
    page: Page, gw: ServedGateway
) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/admin/nodes" in r.url else None)
    page.goto(gw.url + "/#/control/nodes")
    machine = page.get_by_role("group", name="Machine local")
    expect(machine).to_contain_text(re.compile(r"CPU .* of \d+ CPUs · load \d+\.\d\d"))
    expect(machine).to_contain_text(re.compile(r"RAM [\d.]+ [KMGT]?i?B of [\d.]+ [KMGT]iB used"))
    charts = machine.locator("canvas")
    expect(charts).to_have_count(2)
    assert charts.evaluate_all("cs => cs.every(c => c.getAttribute('aria-hidden') === 'true')")

    # Focus on a mode button; samples arrive (every 2 s) and redraw the numbers where
    # they are: the same elements, the focus where it was.
    button = page.get_by_role("group", name="Modes of local").get_by_role("button", name="open")
    button.focus()
    page.evaluate("window.__machine = document.querySelector('.machine')")
    first = machine.get_attribute("data-at")
    deadline = time.monotonic() + 10
    seen = {first}
    while len(seen) < 3:  # two samples after the first read
        assert time.monotonic() < deadline, f"no sample redrew the machine: {seen}"
        time.sleep(0.2)
        seen.add(machine.get_attribute("data-at"))
    expect(machine).to_contain_text(re.compile(r"CPU \d+ % of \d+ CPUs"))  # a share by now
    assert page.evaluate("document.querySelector('.machine') === window.__machine")
    assert page.evaluate("document.activeElement.textContent") == "open"
    assert page.evaluate("document.activeElement.closest('[role=group]').ariaLabel") == (
        "Modes of local"
    )
    # The chart has lines on it, drawn from the samples.
    drawn = charts.first.evaluate(
        "c => c.getContext('2d').getImageData(1, 1, c.width - 2, c.height - 2).data"
        ".some((v, i) => i % 4 === 3 && v > 0)"
    )
    assert drawn
    assert len(asked) == 1, f"the page polled: {asked}"  # the updates came from the stream
