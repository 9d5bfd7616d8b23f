"""Storm a model across two agents (examples/demo-rpc.yaml on this machine): concurrent
streams whose clients leave at random moments, an admin stop and start in the middle, then
the left agent SIGKILLed and started again; then what is left is counted: requests by
outcome, every model's in_flight, the rpc-servers running (two while it is ready, none
after a stop), the gateway's health. Loopback only, bounded in count and time.

    .venv/bin/python bench/storm_span.py [--streams 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv/bin/modelyard"
CONFIG = str(ROOT / "examples/demo-rpc.yaml")
GW = "http://127.0.0.1:8770"
LEAVE = [None, 0.0, 0.05, 0.3, 1.0, 2.0]  # seconds until the client leaves; None: it stays


def rpc_servers() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"ggml-rpc-server"):
                found.append(int(entry))
    return found


async def one(client: httpx.AsyncClient, i: int, seen: Counter[object]) -> None:
    body = {"model": "gemma-split", "stream": True, "max_tokens": 40,
            "messages": [{"role": "user", "content": f"Count to {i % 9 + 3}."}]}  # fmt: skip
    leave = random.choice(LEAVE)
    try:
        async with asyncio.timeout(leave if leave is not None else 120):
            async with client.stream("POST", GW + "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    pass
                seen[r.status_code] += 1
    except TimeoutError:
        seen["left"] += 1
    except httpx.HTTPError as exc:
        seen[type(exc).__name__] += 1


async def storm(n: int, chaos: object = None) -> Counter[object]:
    seen: Counter[object] = Counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as c:
        tasks = [asyncio.create_task(one(c, i, seen)) for i in range(n)]
        if chaos is not None:
            await chaos(c)  # type: ignore[operator]
        await asyncio.gather(*tasks)
    return seen


async def main(streams: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="storm-span-"))
    env = dict(os.environ, MODELYARD_LISTEN="127.0.0.1:8770", MODELYARD_STATE_DIR=str(tmp / "gw"),
               MODELYARD_LEFT_PORT="9771", MODELYARD_RIGHT_PORT="9772",
               MODELYARD_LEFT_STATE_DIR=str(tmp / "left"),
               MODELYARD_RIGHT_STATE_DIR=str(tmp / "right"))  # fmt: skip

    def agent(name: str) -> subprocess.Popen[bytes]:
        out = (tmp / f"{name}.out").open("ab")
        argv = [str(BIN), "agent", "-c", CONFIG, "--node", name]
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def gateway() -> subprocess.Popen[bytes]:
        out = (tmp / "gw.out").open("ab")
        argv = [str(BIN), "serve", "-c", CONFIG]
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    agents = {"left": agent("left"), "right": agent("right")}
    gw = gateway()
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(300):
                try:
                    if all(
                        n["reachable"] for n in (await c.get(GW + "/admin/nodes")).json()["nodes"]
                    ):
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.2)

        async def stop_start(c: httpx.AsyncClient) -> None:
            await asyncio.sleep(1.5)
            await c.post(GW + "/admin/models/gemma-split/stop", timeout=120)
            await asyncio.sleep(0.5)
            await c.post(GW + "/admin/models/gemma-split/start", timeout=120)

        async def kill_left(c: httpx.AsyncClient) -> None:
            await asyncio.sleep(1.0)
            agents["left"].kill()
            agents["left"].wait()
            await asyncio.sleep(3)
            agents["left"] = agent("left")

        print("streams, an admin stop and start:", dict(await storm(streams, stop_start)))
        print("streams, the left agent killed:  ", dict(await storm(streams, kill_left)))
        await asyncio.sleep(6)
        print("streams after:                   ", dict(await storm(streams // 2)))
        async with httpx.AsyncClient(timeout=30) as c:
            for m in (await c.get(GW + "/admin/models")).json()["models"]:
                print(f"  {m['name']}: {m['state']}, in_flight {m['in_flight']}")
            print("  rpc-servers while ready:", len(rpc_servers()))
            await c.post(GW + "/admin/models/gemma-split/stop", timeout=120)
            await asyncio.sleep(4)
            print("  rpc-servers after its stop:", len(rpc_servers()))
            print("  health:", (await c.get(GW + "/health")).status_code)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        for proc in agents.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        print("  rpc-servers at the end:", len(rpc_servers()), f"(logs in {tmp})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    asyncio.run(main(args.streams))
