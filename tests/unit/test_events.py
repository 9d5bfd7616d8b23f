"""The event hub: listeners see every event inline; subscriptions are bounded buffers."""

from __future__ import annotations

import asyncio

from modelyard.events import LOST, Event, Hub


def test_listeners_see_their_kinds_inline_and_subscribers_read_in_order() -> None:
    async def scenario() -> None:
        hub = Hub()
        stored: list[Event] = []
        hub.listen(stored.append, ("instance",))
        sub = hub.subscribe(("instance", "request"))
        hub.publish("instance", model="m", event="ready")
        hub.publish("node", node="n", mode="open", reachable=True)
        hub.publish("request", status=200)
        assert [e.kind for e in stored] == ["instance"]
        first, second = await sub.next(1), await sub.next(1)
        assert first is not None and second is not None
        assert (first.kind, second.kind) == ("instance", "request")
        assert first.seq < second.seq and first.as_dict()["model"] == "m"
        assert await sub.next(0.05) is None  # nothing new: None after the timeout
        assert hub.wants("request") and not hub.wants("config")
        sub.close()
        assert hub.subscribers == 0 and not hub.wants("request")

    asyncio.run(scenario())


def test_a_subscriber_that_never_reads_holds_only_its_buffer_and_is_told_what_it_lost() -> None:
    async def scenario() -> None:
        hub = Hub()
        slow = hub.subscribe(size=10)
        for i in range(10_000):
            hub.publish("request", n=i)
        lost = await slow.next(1)
        assert lost is not None and lost.kind == LOST and lost.data == {"lost": 9_990}
        rest = [await slow.next(1) for _ in range(10)]
        assert [e.data["n"] for e in rest if e is not None] == list(range(9_990, 10_000))
        assert await slow.next(0.01) is None

    asyncio.run(scenario())


def test_a_reader_waiting_wakes_on_the_next_event() -> None:
    async def scenario() -> None:
        hub = Hub()
        sub = hub.subscribe(("config",))
        reader = asyncio.ensure_future(sub.next(5))
        await asyncio.sleep(0.01)
        hub.publish("config", added=["x"], changed=[], removed=[])
        event = await asyncio.wait_for(reader, 1)
        assert event is not None and event.data["added"] == ["x"]

    asyncio.run(scenario())
