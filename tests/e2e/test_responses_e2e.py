"""OpenAI Responses through a real gateway with the official ``openai`` SDK: translated onto
Chat Completions for a real llama-server (its default) and passed through to the same
server when the config says it speaks Responses; streams and tool calls from a stub engine
whose answers end (Gemma 270M, a base model, talks until its limit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    ServedGateway,
    gateways,
    gemma_model,
    stub_log,
    stub_model,
    wait_slots_idle,
    write_config,
)

pytestmark = pytest.mark.e2e

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather",
    "parameters": CITY,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("responses")
    reply = tmp / "reply.txt"
    reply.write_text("One, two, three.")
    models = (
        gemma_model("gemma", gemma, parallel=2)
        + gemma_model("gemma-n", gemma, parallel=2, protocols="[responses]")
        + stub_model("stub", "--record", "--reply", f"'@{reply}'")
    )
    with gateways(tmp) as start:
        yield start(write_config(tmp, models))


def sdk(gw: ServedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.mark.parametrize(("model", "how"), [("gemma", "translated"), ("gemma-n", "native")])
def test_create_on_a_real_engine(gw: ServedGateway, model: str, how: str) -> None:
    raw = sdk(gw).responses.with_raw_response.create(
        model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=12
    )
    assert raw.headers["x-modelyard-protocol"] == f"responses; {how}"
    said = raw.parse()
    assert said.object == "response" and said.output_text
    assert said.usage is not None and said.usage.output_tokens > 0
    rows = gw.admin("GET", "/admin/requests", params={"model": model, "limit": 3}).json()
    assert rows["requests"][0]["tokens_out"]  # counted on both paths


def test_a_streamed_answer_and_built_in_tools_declined(gw: ServedGateway) -> None:
    client = sdk(gw)
    with client.responses.stream(
        model="stub", input=[{"role": "user", "content": "Count."}],
        tools=[{"type": "web_search"}, WEATHER],  # type: ignore[list-item]
    ) as stream:  # fmt: skip
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "One, two, three."
    assert final.status == "completed"
    sent = stub_log(gw, "stub")["requests"][-1]["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]  # web search: out
    raw = client.responses.with_raw_response.create(
        model="stub",
        input="Count.",
        tools=[{"type": "web_search"}],  # type: ignore[list-item]
    )
    assert raw.headers["x-modelyard-declined-tools"] == "web_search"


def test_a_tool_call_and_its_output(gw: ServedGateway) -> None:
    client = sdk(gw)
    stub = {"tool": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    said = client.responses.create(model="stub", input="Weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
                                   extra_body={"stub": stub})  # fmt: skip
    call = said.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Paris"}'
    with client.responses.stream(model="stub", input="Weather?", tools=[WEATHER],  # type: ignore[list-item]
                                 extra_body={"stub": stub}) as stream:  # fmt: skip
        streamed = stream.get_final_response().output[0]
    assert streamed.type == "function_call" and streamed.arguments == '{"city": "Paris"}'
    client.responses.create(model="stub", tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather",
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 °C"},
    ])  # fmt: skip
    sent = stub_log(gw, "stub")["requests"][-1]["body"]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "18 °C"}
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "gemma"}, 400, "input", "input"),
        ({"model": "ghost", "input": "x"}, 404, "model", "does not exist"),
        ({"model": "gemma", "input": "x", "previous_response_id": "resp_1"}, 400,
         "previous_response_id", "keeps none"),
        ({"model": "gemma", "input": [{"role": "robot", "content": "x"}]}, 400, "input.0.role", ""),
    ],
)  # fmt: skip
def test_bad_requests_name_what_is_wrong(
    gw: ServedGateway, body: dict[str, object], status: int, param: str, says: str
) -> None:
    resp = httpx.post(gw.url + "/v1/responses", json=body, timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_a_client_that_leaves_mid_stream_frees_the_slot(gw: ServedGateway) -> None:
    body = {"model": "gemma", "input": "Write a long story.", "max_output_tokens": 400,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", gw.url + "/v1/responses", json=body, timeout=60) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n > 20:
                break
    wait_slots_idle(gw, "gemma")
