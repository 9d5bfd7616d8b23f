"""The web console's cost: its first load, a 500-message conversation, a streamed answer.

Starts ``modelyard serve`` on a throwaway config with one ``command`` model, ``stub``:
tests/slow_upstream.py run through this script's ``_stub`` role, which answers every chat
request with the same Markdown reply cut into ``--chunks`` SSE chunks ``--gap`` seconds
apart (the console sends no ``stub`` options, so the role supplies them). Before the gateway
starts, two conversations are written into its state dir with the store's own Python API
(``modelyard.conversations``): one of ``--messages`` messages (user and assistant in turn,
a few hundred characters each, Markdown with lists and code blocks), one of 2. Then, in
Debian's chromium driven by Playwright:

1. **First load**: ``/`` in a fresh context (empty cache), every response until the network
   has been quiet for a second: its bytes on the wire (``request.sizes()``: headers and the
   body as sent, gzipped when it was) and its body uncompressed.
2. **The long conversation**: ``#/chat/ID`` in a fresh context; the time from navigation to
   the last ``.message`` in the DOM and to "painted" (the first task after the frame that
   shows it: the main thread's style, layout and paint done; rasterizing is not counted);
   then the message list scrolled to the top and back, a fixed step (three quarters of its
   height) per animation frame, with every frame's time (``requestAnimationFrame`` deltas)
   and long tasks (a ``PerformanceObserver`` of ``longtask``).
3. **A streamed answer**, ``--runs`` times in that page: fill "Message", click "Send", and
   in the page the time from the click to the chat request's ``fetch`` call, its request
   sent and its response's headers (resource timing), to the first text in the new answer's
   body (in the DOM, and painted), to its last chunk's text, and the frames meanwhile; then
   the requests the console makes after the answer, until the page is quiet. After each,
   the same request (the body and ``x-modelyard-conversation`` header the console sent,
   taken from the browser) through the ``openai`` SDK, streamed: time to the request sent
   (httpx's request hook: the body built), to the headers, to the first content, to the end.
4. The same on the 2-message conversation.

    .venv/bin/python bench/console.py [--messages 500] [--runs 5] [--chunks 64] [--gap 0.02]

About a minute. Report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from gateway import command_model, start_gateway, write_config
from harness import REPO, Running, free_port, log

CONSOLE = Path(__file__).resolve()
FLAGS = [  # as scripts/console_screenshots.py
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
FINAL = "That is the whole answer."  # the reply's last sentence: its last chunk completes it
REPLY = f"""Here is a function that reads a config file and checks one key:

```python
import tomllib

def port_of(path: str) -> int:
    with open(path, "rb") as f:
        config = tomllib.load(f)
    port = int(config["server"]["port"])
    if not 0 < port < 65536:
        raise ValueError(f"bad port {{port}}")
    return port
```

- It opens the file in **binary** mode, as `tomllib` wants.
- A missing key raises `KeyError`; say so in the docstring.

{FINAL}"""

# The seeded conversation: questions and answers that look like a working session.
TOPICS = ["a TOML config", "a CSV export", "a retry loop", "an SQLite index", "a systemd unit",
          "a Dockerfile", "a unit test", "a regex", "an HTTP client", "a log rotation"]  # fmt: skip


def question(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"Question {i}: I am working on {topic} for our service and it fails on the staging "
        f"machine but not on mine. What should I check first, and can you show a short "
        f"example that does it properly? Keep it brief, please."
    )


def answer(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    kind = i % 3
    if kind == 0:
        return (
            f"For {topic}, check the **environment** first: the staging machine may run "
            f"another Python or lack a file.\n\n```python\ndef check_{i}(path: str) -> bool:\n"
            f"    import os\n    if not os.path.exists(path):\n        raise FileNotFoundError"
            f"(path)\n    return os.access(path, os.R_OK)\n```\n\nRun it on both machines and "
            f"compare; `check_{i}` returns `True` where it can be read."
        )
    if kind == 1:
        return (
            f"Three things break {topic} between machines:\n\n1. **Paths**: relative paths "
            f"depend on the working directory.\n2. **Permissions**: the service user is not "
            f"you; try `sudo -u service ls`.\n3. **Versions**: compare `pip freeze` on both.\n\n"
            f"Start with the second: it is the most common ({i} % of the cases I saw is a "
            f"guess, but a good one)."
        )
    return (
        f"Log what {topic} sees before it fails, then compare:\n\n```bash\njournalctl -u "
        f"service-{i} --since '10 min ago' | grep -i error\nsystemctl show service-{i} "
        f"-p Environment\n```\n\nIf the environment differs, set it in the unit file with "
        f"`Environment=` and *restart*, not reload."
    )


async def seed(db: Path, messages: int) -> str:
    """A conversation of ``messages`` messages (user first, then in turn) in the store at
    ``db``, written with the store's own API before the gateway opens it; its id."""
    from modelyard.conversations import Answer, Conversations, NewConversation, NewMessage

    store = Conversations(db, 16 * 1024**2)
    await store.open()
    new = NewConversation(title=f"A session of {messages} messages", model="stub")
    cid: str = (await store.create("", new))["id"]
    for i in range(messages):
        if i % 2 == 0:
            await store.append("", cid, NewMessage(role="user", content=question(i // 2)))
        else:  # as the gateway stores a streamed answer (gateway/capture.py)
            reply = Answer(answer(i // 2), model="stub", node="local", ttft_s=0.05,
                           tokens_out=90, tokens_per_s=40.0)  # fmt: skip
            store.queue(store.save_answer, cid, reply)
    await store.close()  # after what is queued
    return cid


# --------------------------------------------------------------------------- the stub role


def stub_role(argv: list[str]) -> None:
    """tests/slow_upstream.py answering ``REPLY`` in ``--chunks`` pieces, ``--gap`` apart,
    to requests that carry no ``stub`` options of their own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--gap", type=float, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from aiohttp import web

    import slow_upstream

    cuts = [round(i * len(REPLY) / args.chunks) for i in range(args.chunks + 1)]
    slow_upstream.REPLY.extend(REPLY[a:b] for a, b in itertools.pairwise(cuts))
    read = web.BaseRequest.json

    async def json_with_gap(self: web.BaseRequest, **kwargs: Any) -> Any:
        body = await read(self, **kwargs)
        if isinstance(body, dict):
            body.setdefault("stub", {"gap": args.gap})
        return body

    web.BaseRequest.json = json_with_gap  # type: ignore[method-assign]
    sys.argv = ["slow_upstream.py", "--port", args.port]
    slow_upstream.main()


# --------------------------------------------------------------------------- in the page

INIT = """(() => {
  const B = (window.__bench = { frames: [], longtasks: [], marks: {}, run: null });
  // inFrame: true from the frame's first animation callback until the first task after the
  // frame (style, layout and paint come between), so that a change made in a frame's
  // callbacks is known to be painted at the next task, and one made in a task at the next
  // task after the next frame.
  const raf = window.requestAnimationFrame.bind(window);
  const ending = new MessageChannel();
  ending.port1.onmessage = () => { B.inFrame = false; };
  window.requestAnimationFrame = (cb) => raf((t) => {
    if (!B.inFrame) { B.inFrame = true; ending.port2.postMessage(0); }
    cb(t);
  });
  const afterPaint = (cb) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => cb(performance.now());
    if (B.inFrame) ch.port2.postMessage(0);
    else raf(() => ch.port2.postMessage(0));
  };
  let last = 0;
  const tick = (t) => {
    if (last) B.frames.push([t, t - last]);
    last = t;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) B.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (e) { B.noLongtasks = String(e); }
  const expected = __EXPECT__;
  const all = new MutationObserver(() => {
    const log = document.querySelector("ol.messages");
    if (log && log.childElementCount >= expected && !B.marks.all) {
      B.marks.all = performance.now();
      all.disconnect();
      afterPaint((t) => { B.marks.allPainted = t; });
    }
  });
  all.observe(document, { childList: true, subtree: true });
  document.addEventListener("click", (e) => {
    if (B.run && B.run.click === null && e.target.closest && e.target.closest("button.send")) {
      B.run.click = performance.now();
    }
  }, { capture: true });
  B.arm = (final) => {
    performance.clearResourceTimings(); // a fresh buffer (250 entries) for this run's requests
    const log = document.querySelector("ol.messages");
    const before = log.lastElementChild;
    const run = (B.run = { click: null, first: null, firstPainted: null, last: null,
                           lastPainted: null, mutations: 0 });
    const watch = new MutationObserver(() => {
      const item = log.lastElementChild;
      if (!item || item === before || !item.matches(".message.assistant")) return;
      const now = performance.now();
      run.mutations++;
      const text = item.querySelector(".body").textContent;
      if (text && run.first === null) {
        run.first = now;
        afterPaint((t) => { run.firstPainted = t; });
      }
      if (text.includes(final) && run.last === null) {
        run.last = now;
        watch.disconnect();
        afterPaint((t) => { run.lastPainted = t; });
      }
    });
    watch.observe(log, { childList: true, subtree: true, characterData: true });
  };
  B.scroll = () => new Promise((done) => {
    const log = document.querySelector("ol.messages");
    const step = Math.max(1, Math.round(log.clientHeight * 0.75));
    const out = { start: performance.now(), height: log.scrollHeight, view: log.clientHeight,
                  step, frames: 0 };
    let up = true;
    const tick = () => {
      out.frames++;
      if (up) {
        log.scrollTop = Math.max(0, log.scrollTop - step);
        if (log.scrollTop <= 0) { up = false; out.top = performance.now(); }
      } else {
        const was = log.scrollTop;
        log.scrollTop = was + step;
        if (log.scrollTop <= was) { out.end = performance.now(); return done(out); }
      }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
})();"""


SNAPSHOT = """({frames: __bench.frames, longtasks: __bench.longtasks, marks: __bench.marks,
  run: __bench.run, noLongtasks: __bench.noLongtasks ?? null, now: performance.now(),
  resources: performance.getEntriesByType("resource").map((e) => ({
    path: new URL(e.name).pathname + new URL(e.name).search, start: e.startTime,
    sent: e.requestStart, headers: e.responseStart, end: e.responseEnd,
    transfer: e.transferSize, body: e.decodedBodySize }))})"""
DONE = """() => window.__bench.run.lastPainted !== null
  && !document.querySelector("button.send").hidden"""


def frames_in(bench: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The rAF deltas of the frames that began in [start, end] and the long tasks there."""
    deltas = [d for t, d in bench["frames"] if start < t <= end]
    tasks = [d for t, d in bench["longtasks"] if start <= t + d and t <= end]
    return {
        "frames": len(deltas),
        "longest_frame_ms": max(deltas, default=0.0),
        "frames_over_50ms": sum(d > 50 for d in deltas),
        "median_frame_ms": statistics.median(deltas) if deltas else 0.0,
        "long_tasks": len(tasks),
        "longest_task_ms": max(tasks, default=0.0),
    }


# --------------------------------------------------------------------------- measures


def quiet(page: Any, activity: list[float], seconds: float = 1.0, within: float = 30.0) -> None:
    """Until no request has started or ended for ``seconds`` (the event streams aside)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
        if time.monotonic() - activity[0] >= seconds:
            return
    raise RuntimeError(f"the page did not go quiet within {within:.0f} s")


def track(page: Any) -> list[float]:
    activity = [time.monotonic()]

    def touch(_: Any) -> None:
        activity[0] = time.monotonic()

    for event in ("request", "requestfinished", "requestfailed"):
        page.on(event, touch)
    return activity


def first_load(browser: Any, base: str) -> dict[str, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    started: list[Any] = []
    finished: list[Any] = []
    page.on("request", lambda r: started.append(r))  # Playwright wants a function of Python
    page.on("requestfinished", lambda r: finished.append(r))
    activity = track(page)
    page.goto(base + "/")
    page.get_by_role("button", name="Send").wait_for()
    quiet(page, activity)
    nav = page.evaluate("JSON.parse(JSON.stringify(performance.getEntriesByType('navigation')[0]))")
    files = []
    for req in finished:
        sizes = req.sizes()
        resp = req.response()
        files.append(
            {
                "path": req.url.removeprefix(base),
                "status": resp.status,
                "encoding": resp.header_value("content-encoding") or "",
                "wire": sizes["responseBodySize"] + sizes["responseHeadersSize"],
                "headers": sizes["responseHeadersSize"],
                "body": sizes["responseBodySize"],
                "plain": len(resp.body()),
            }
        )
    open_ = [r.url.removeprefix(base) for r in started if r not in finished]
    context.close()
    return {"files": files, "open": open_, "load_event_ms": nav["loadEventEnd"]}


def conversation_page(browser: Any, base: str, cid: str, count: int) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT.replace("__EXPECT__", str(count)))
    page = context.new_page()
    page.goto(f"{base}/#/chat/{cid}")
    page.wait_for_function("() => window.__bench.marks.allPainted !== undefined", timeout=120_000)
    return context, page


def open_long(page: Any, base: str, cid: str) -> dict[str, Any]:
    bench = page.evaluate(SNAPSHOT)
    marks = bench["marks"]
    entry = page.evaluate(
        "(p) => JSON.parse(JSON.stringify(performance.getEntriesByType('resource')"
        ".find((e) => new URL(e.name).pathname === p)))",
        f"/console/api/conversations/{cid}",
    )
    return {
        "all_in_dom_ms": marks["all"],
        "all_painted_ms": marks["allPainted"],
        "json_bytes": entry["decodedBodySize"],
        "json_received_ms": entry["responseEnd"],
        "load": frames_in(bench, entry["responseEnd"], marks["allPainted"]),
        "no_longtasks": bench.get("noLongtasks"),
    }


def scroll(page: Any) -> dict[str, Any]:
    page.wait_for_timeout(500)
    out: dict[str, Any] = page.evaluate("window.__bench.scroll()")
    bench = page.evaluate(SNAPSHOT)
    out.update(frames_in(bench, out["start"], out["end"]))
    return out


def stream_once(page: Any, activity: list[float], captured: list[Any]) -> dict[str, Any]:
    quiet(page, activity)
    page.evaluate("(final) => window.__bench.arm(final)", FINAL)
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill("One more: how do I read the port from an environment variable instead?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(DONE, timeout=60_000)
    quiet(page, activity)  # the console reads the conversation back after an answer
    bench = page.evaluate(SNAPSHOT)
    run = bench["run"]
    click = run["click"]
    meta = page.locator(".message.assistant .meta").last.text_content()
    chat = next(r for r in bench["resources"] if r["path"] == "/v1/chat/completions")
    others = [r for r in bench["resources"] if r["path"] != "/v1/chat/completions"]
    out = {
        "fetch_called_ms": chat["start"] - click,
        "request_sent_ms": chat["sent"] - click,
        "headers_ms": chat["headers"] - click,
        "others": [(r["path"], r["transfer"], r["body"]) for r in others],
        "after_frames": frames_in(bench, run["lastPainted"], bench["now"]),
        "first_in_dom_ms": run["first"] - click,
        "first_painted_ms": run["firstPainted"] - click,
        "last_in_dom_ms": run["last"] - click,
        "last_painted_ms": run["lastPainted"] - click,
        "mutation_batches": run["mutations"],
        "console_meta": meta,
        "request": captured[-1],
    }
    out.update(frames_in(bench, click, run["lastPainted"]))
    return out


def sdk_client(base: str) -> tuple[Any, dict[str, float]]:
    """An ``openai.OpenAI`` for ``base`` and the times its httpx client last sent a request
    (its body built) and received a response's headers."""
    import httpx
    import openai

    stamps: dict[str, float] = {}

    def sent(_: httpx.Request) -> None:
        stamps["sent"] = time.perf_counter()

    def headers(_: httpx.Response) -> None:
        stamps["headers"] = time.perf_counter()

    http = httpx.Client(event_hooks={"request": [sent], "response": [headers]})
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, http_client=http)
    return client, stamps


def sdk_once(client: Any, stamps: dict[str, float], request: dict[str, Any]) -> dict[str, float]:
    """The request the console sent, through the openai SDK, streamed: milliseconds to the
    request sent, to the response's headers, to the first content and to the end."""
    body = dict(request["body"])
    headers = {"x-modelyard-conversation": request["conversation"]}
    stamps.clear()
    began = time.perf_counter()
    first = None
    stream = client.chat.completions.create(**body, extra_headers=headers)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the SDK's stream carried no content")
    return {
        "sent_ms": (stamps["sent"] - began) * 1000,
        "headers_ms": (stamps["headers"] - began) * 1000,
        "first_ms": (first - began) * 1000,
        "end_ms": (end - began) * 1000,
    }


def streamed(page: Any, sdk: tuple[Any, dict[str, float]], runs: int) -> list[dict[str, Any]]:
    import orjson

    captured: list[Any] = []

    def on_request(req: Any) -> None:
        if req.url.endswith("/v1/chat/completions") and req.method == "POST":
            body = orjson.loads(req.post_data_buffer)
            conversation = req.headers.get("x-modelyard-conversation")
            captured.append({"body": body, "conversation": conversation})

    page.on("request", on_request)
    activity = track(page)
    results = []
    for i in range(runs):
        browser_run = stream_once(page, activity, captured)
        sdk_run = sdk_once(*sdk, browser_run["request"])
        messages = len(browser_run.pop("request")["body"]["messages"])
        painted, first = browser_run["first_painted_ms"], sdk_run["first_ms"]
        log(f"  run {i + 1}: {messages} messages; first token {painted:.0f} ms, SDK {first:.0f}")
        results.append({"messages_sent": messages, "browser": browser_run, "sdk": sdk_run})
    return results


# --------------------------------------------------------------------------- the report


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def ms(value: float) -> str:
    return f"{value:.0f}"


def report_stream(name: str, results: list[dict[str, Any]]) -> None:
    b = [r["browser"] for r in results]
    s = [r["sdk"] for r in results]
    counts = [r["messages_sent"] for r in results]
    print(f"\n### A streamed answer, {name}: {len(results)} runs, {counts} messages sent")
    print("\nIn the browser, milliseconds from the click on Send:\n")
    row("run", "fetch called", "request sent", "headers", "first text in DOM", "painted",
        "last text in DOM", "painted", "longest frame", "frames > 50 ms",
        "long tasks (longest)", "the console's own meta line")  # fmt: skip
    row(*["---:"] * 11, "---")
    keys = "fetch_called request_sent headers first_in_dom first_painted last_in_dom last_painted"
    keys = [f"{k}_ms" for k in (*keys.split(), "longest_frame")]
    for i, x in enumerate(b, 1):
        tasks = f"{x['long_tasks']} ({ms(x['longest_task_ms'])})"
        row(i, *(ms(x[k]) for k in keys), x["frames_over_50ms"], tasks, x["console_meta"])

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    row("median", *(ms(median(b, k)) for k in keys), "", "", "")
    print("\nThe same requests through the openai SDK, milliseconds from `create()`:\n")
    sdk_keys = ["sent_ms", "headers_ms", "first_ms", "end_ms"]
    row("run", "request sent", "headers", "first content", "end")
    row(*["---:"] * 5)
    for i, y in enumerate(s, 1):
        row(i, *(ms(y[k]) for k in sdk_keys))
    row("median", *(ms(median(s, k)) for k in sdk_keys))
    first_b, end_b = median(b, "first_painted_ms"), median(b, "last_painted_ms")
    first_s, end_s = median(s, "first_ms"), median(s, "end_ms")
    print(
        f"\nbrowser (painted) ÷ SDK, medians: first token {first_b / first_s:.2f}x "
        f"({first_b - first_s:+.0f} ms), end {end_b / end_s:.2f}x ({end_b - end_s:+.0f} ms)"
    )
    after = [x["after_frames"] for x in b]
    print(
        "\nAfter the answer, until the page is quiet: longest frame "
        f"{ms(max(a['longest_frame_ms'] for a in after))} ms, long tasks "
        f"{[a['long_tasks'] for a in after]}, the longest "
        f"{ms(max(a['longest_task_ms'] for a in after))} ms; the other requests of run 1's send "
        f"(path, bytes transferred, body): {b[0]['others']}"
    )


def report(load: dict[str, Any], long: dict[str, Any], sc: dict[str, Any], args: Any) -> None:
    files = load["files"]
    print("### First load of / (fresh context, empty cache)")
    row("response", "status", "encoding", "on the wire: headers + body", "body uncompressed")
    row("---", "---:", "---", "---:", "---:")
    for f in files:
        wire = f"{f['wire']:,} ({f['headers']:,} + {f['body']:,})"
        row(f"`{f['path']}`", f["status"], f["encoding"] or "—", wire, f"{f['plain']:,}")
    wire = f"**{sum(f['wire'] for f in files):,}** (bodies {sum(f['body'] for f in files):,})"
    plain = f"**{sum(f['plain'] for f in files):,}**"
    row(f"**total, {len(files)} responses**", "", "", wire, plain)
    still = ", ".join(load["open"]) or "none"
    print(f"\nstill open when quiet, not counted: {still}")
    print(f"load event at {ms(load['load_event_ms'])} ms")
    print(f"\n### Opening the {args.messages}-message conversation (#/chat/ID)")
    received = ms(long["json_received_ms"])
    print(f"- its JSON: {long['json_bytes']:,} bytes, received at {received} ms")
    print(f"- the last `.message` in the DOM at {ms(long['all_in_dom_ms'])} ms after navigation")
    print(f"- the frame after it done at {ms(long['all_painted_ms'])} ms")
    ld = long["load"]
    print(
        f"- from the JSON received to painted: longest frame {ms(ld['longest_frame_ms'])} ms; "
        f"{ld['long_tasks']} long task(s), the longest {ms(ld['longest_task_ms'])} ms"
    )
    if long["no_longtasks"]:
        print(f"- no 'longtask' entries in this browser: {long['no_longtasks']}")
    print(
        f"\n### Scrolling it to the top and back: {sc['step']} px per frame, the list "
        f"{sc['height']:,} px tall, {sc['view']} px in view"
    )
    print(
        f"- {sc['frames']} frames in {ms(sc['end'] - sc['start'])} ms; median frame "
        f"{sc['median_frame_ms']:.1f} ms, longest {ms(sc['longest_frame_ms'])} ms, "
        f"{sc['frames_over_50ms']} over 50 ms"
    )
    print(f"- {sc['long_tasks']} long task(s), the longest {ms(sc['longest_task_ms'])} ms")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_stub":
        stub_role(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="of the long conversation")
    parser.add_argument("--runs", type=int, default=5, help="streamed answers per conversation")
    parser.add_argument("--chunks", type=int, default=64, help="SSE chunks per answer")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between chunks")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("Debian's chromium is needed: apt-get install -y chromium", file=sys.stderr)
        return 1
    import openai
    from playwright.sync_api import sync_playwright

    running = Running(grace=30)
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-console-"))
    port = free_port()
    command = [sys.executable, str(CONSOLE), "_stub", "--port", "{port}",
               "--chunks", str(args.chunks), "--gap", str(args.gap)]  # fmt: skip
    config = write_config(tmp, port, {"stub": command_model(command, 4, 100)})
    db = tmp / "state" / "conversations.db"
    began = time.monotonic()
    long_id = asyncio.run(seed(db, args.messages))
    short_id = asyncio.run(seed(db, 2))
    log(f"seeded {args.messages} + 2 messages in {time.monotonic() - began:.2f} s")
    try:
        gw = start_gateway(running, config, port, tmp / "gateway.log")
        gw.start("stub")
        sdk = sdk_client(gw.base)
        warm = sdk[0].chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for _ in warm:
            pass
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            log("first load")
            load = first_load(browser, gw.base)
            log(f"the {args.messages}-message conversation")
            context, page = conversation_page(browser, gw.base, long_id, args.messages)
            long = open_long(page, gw.base, long_id)
            sc = scroll(page)
            long_runs = streamed(page, sdk, args.runs)
            context.close()
            log("the 2-message conversation")
            context, page = conversation_page(browser, gw.base, short_id, 2)
            short_runs = streamed(page, sdk, args.runs)
            context.close()
            version = browser.version
            browser.close()
    finally:
        running.stop_all()
    print(
        f"chromium {version}, openai {openai.__version__}; stub: {args.chunks} chunks, "
        f"{args.gap * 1000:.0f} ms apart; viewport {VIEWPORT['width']}x{VIEWPORT['height']}\n"
    )
    report(load, long, sc, args)
    report_stream(f"{args.messages}-message conversation", long_runs)
    report_stream("2-message conversation", short_runs)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
