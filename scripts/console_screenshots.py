"""Screenshots of every console page, for docs/console.md: rerun after changing the console.

    .venv/bin/python scripts/console_screenshots.py        # writes docs/console/*.png

Starts a gateway on a throwaway config (two stub models from tests/slow_upstream.py that
answer with fixed Markdown, so the pictures do not change from run to run; no llama-server
needed), drives Debian's chromium with Playwright (scripts/test.sh installs both), and
saves one PNG per page: chat (light, dark, a phone), and each control section.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "console"
STUB = ROOT / "tests" / "slow_upstream.py"
REPLY = """Here is a small function that adds two numbers:

```python
def add(a: int, b: int) -> int:
    return a + b
```

It is **typed**, and `add(2, 3)` gives `5`.
"""
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int) -> Path:
    (tmp / "reply.md").write_text(REPLY, encoding="utf-8")
    stub = f"[{sys.executable}, {STUB}, --port, '{{port}}', --reply, '@{tmp / 'reply.md'}']"
    config = tmp / "modelyard.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nstate_dir: {tmp / 'state'}\n"
        "nodes:\n  local:\n    modes: {open: open, gaming: gated, off: drained}\n"
        "tiers:\n  fast: [coder, writer]\n"
        "policy:\n  - {name: code, tag: '#code', use: coder}\n"
        "models:\n"
        f"  coder:\n    engine: command\n    command: {stub}\n    description: a coding model\n"
        f"  writer:\n    engine: command\n    command: {stub}\n    swap_group: one\n",
        encoding="utf-8",
    )
    return config


def chat(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Model").select_option("coder")
    page.get_by_role("textbox", name="Message", exact=True).fill(
        "Write a function that adds two numbers"
    )
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message.assistant .body").last).to_contain_text("return a + b")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def main() -> int:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("Debian's chromium is needed: apt-get install -y chromium", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(tmp, port)
        log = (tmp / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
                shots = [
                    ("chat-light", {"width": 1280, "height": 800}, "light", None),
                    ("chat-dark", {"width": 1280, "height": 800}, "dark", None),
                    ("chat-phone", {"width": 375, "height": 740}, "light", None),
                    ("control-models", {"width": 1280, "height": 700}, "light", "models"),
                    ("control-nodes", {"width": 1280, "height": 700}, "light", "nodes"),
                    ("control-requests", {"width": 1280, "height": 700}, "light", "requests"),
                    ("control-decisions", {"width": 1280, "height": 700}, "light", "decisions"),
                    ("control-explain", {"width": 1280, "height": 700}, "light", "explain"),
                    ("control-config", {"width": 1280, "height": 700}, "light", "config"),
                ]
                for name, viewport, scheme, section in shots:
                    context = browser.new_context(viewport=viewport, color_scheme=scheme)  # type: ignore[arg-type]
                    page = context.new_page()
                    if section is None:
                        chat(page, url)
                    else:
                        page.goto(f"{url}/#/control/{section}")
                        if section == "explain":
                            page.get_by_label("Prompt").fill("please review this #code")
                            page.get_by_role("button", name="Explain").click()
                            expect(page.locator(".trail")).to_be_visible()
                        page.wait_for_timeout(500)
                    page.screenshot(path=str(OUT / f"{name}.png"))
                    print(f"wrote docs/console/{name}.png")
                    context.close()
                browser.close()
        finally:
            gateway.terminate()
            gateway.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
