"""Anthropic Messages through a real gateway, with the official ``anthropic`` SDK: to a real
llama-server that speaks Messages itself (passed through) and to the same model marked as
Chat-Completions-only (translated); tool calls translated from a stub engine's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import (
    ServedGateway,
    gateways,
    gemma_model,
    stub_model,
    wait_slots_idle,
    write_config,
)

pytestmark = pytest.mark.e2e

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"name": "get_weather", "description": "The weather in a city", "input_schema": CITY}]
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("anthropic")
    models = (
        gemma_model("gemma", gemma, parallel=2)
        + gemma_model("gemma-t", gemma, parallel=2, protocols="[]")
        + stub_model("tools", "--record")
        + stub_model("speaker", "--record", protocols="[anthropic]")
        + "personas:\n  bard:\n    use: speaker\n    system: Speak in rhyme.\n"
    )
    with gateways(tmp) as start:
        yield start(write_config(tmp, models))


def client(gw: ServedGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0, timeout=120)


@pytest.mark.parametrize(("model", "how"), [("gemma", "native"), ("gemma-t", "translated")])
def test_create_stream_and_count(gw: ServedGateway, model: str, how: str) -> None:
    sdk = client(gw)
    raw = sdk.messages.with_raw_response.create(
        model=model, max_tokens=12, system="Be brief.", messages=HI
    )
    assert raw.headers["x-modelyard-protocol"] == f"anthropic; {how}"
    assert raw.headers["x-modelyard-model"] == model
    said = raw.parse()
    assert said.type == "message" and said.role == "assistant"
    assert said.content[0].type == "text" and said.content[0].text  # type: ignore[union-attr]
    assert said.stop_reason in ("end_turn", "max_tokens")
    assert said.usage.input_tokens > 5 and 0 < said.usage.output_tokens <= 12

    with sdk.messages.stream(model=model, max_tokens=12, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")

    counted = sdk.messages.count_tokens(model=model, messages=HI)
    assert counted.input_tokens > 0
    # The decision says what happened.
    decision = gw.admin("GET", f"/admin/decisions/{raw.headers['x-modelyard-decision']}").json()
    assert decision["protocol"] == f"anthropic, {how}"
    rows = gw.admin("GET", "/admin/requests", params={"model": model, "limit": 5}).json()
    assert any(r["tokens_out"] for r in rows["requests"])  # counted on both paths


def test_tool_calls_come_back_as_tool_use(gw: ServedGateway) -> None:
    sdk = client(gw)
    stub = {"tool": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    asked = dict(model="tools", max_tokens=50, tools=TOOLS, tool_choice={"type": "any"},
                 messages=[{"role": "user", "content": "Weather in Paris?"}],
                 extra_body={"stub": stub})  # fmt: skip
    said = sdk.messages.create(**asked)  # type: ignore[call-overload]
    assert said.stop_reason == "tool_use"
    use = said.content[0]
    assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"city": "Paris"})
    with sdk.messages.stream(**asked) as stream:  # type: ignore[call-overload]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}
    # The engine got OpenAI tools and tool_choice; a tool result goes back as a tool message.
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id,
                                           "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "18 °C, sunny"}]},
    ]  # fmt: skip
    sdk.messages.create(model="tools", max_tokens=20, messages=follow, tools=TOOLS)  # type: ignore[arg-type]
    log = httpx.get(gw.model("tools")["upstream"].removesuffix("/v1") + "/stub/log").json()
    first, last = log["requests"][0]["body"], log["requests"][-1]["body"]
    assert first["tool_choice"] == "required"
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert last["messages"][-1] == {
        "role": "tool",
        "tool_call_id": use.id,
        "content": "18 °C, sunny",
    }


def test_a_persona_s_edits_are_translated_even_for_an_engine_that_speaks_messages(
    gw: ServedGateway,
) -> None:
    # speaker speaks Messages: a request as it came would go as it came. Through a persona
    # the request is edited, which only its translation can carry.
    raw = client(gw).messages.with_raw_response.create(
        model="bard", max_tokens=9, system="Be brief.", messages=HI
    )
    assert raw.headers["x-modelyard-protocol"] == "anthropic; translated"
    assert raw.parse().content[0].type == "text"
    log = httpx.get(gw.model("speaker")["upstream"].removesuffix("/v1") + "/stub/log").json()
    sent = log["requests"][-1]  # the stub logs its Chat Completions requests alone
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Speak in rhyme.\n\nBe brief."},  # the persona's first
        {"role": "user", "content": "Say hello."},
    ]


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        ({"model": "ghost", "max_tokens": 5, "messages": HI}, 404, "not_found_error", "exist"),
        ({"model": "gemma", "messages": HI}, 400, "invalid_request_error", "`max_tokens`"),
        ({"model": "gemma", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
         400, "invalid_request_error", "user or assistant"),
        ({"max_tokens": 5, "messages": HI}, 400, "invalid_request_error", "`model` is required"),
        ({"model": "gemma", "max_tokens": 5, "messages": HI,
          "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         400, "invalid_request_error", "server tool"),
    ],
)  # fmt: skip
def test_bad_requests_get_anthropic_errors(
    gw: ServedGateway, body: dict[str, object], status: int, kind: str, says: str
) -> None:
    resp = httpx.post(gw.url + "/v1/messages", json=body, timeout=60,
                      headers={"x-api-key": "none", "anthropic-version": "2023-06-01"})  # fmt: skip
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert says in error["error"]["message"], error
    not_json = httpx.post(gw.url + "/v1/messages", content=b"{", timeout=10)
    assert not_json.status_code == 400 and not_json.json()["type"] == "error"


@pytest.mark.parametrize("model", ["gemma", "gemma-t"])
def test_a_client_that_leaves_mid_stream_frees_the_slot(gw: ServedGateway, model: str) -> None:
    body = {"model": model, "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story."}]}  # fmt: skip
    with httpx.stream("POST", gw.url + "/v1/messages", json=body, timeout=60) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n > 12:
                break  # leave mid-answer
    wait_slots_idle(gw, model)
