"""Personas end to end: a real gateway, the stub engine recording what it received, and the
official OpenAI SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import ServedGateway, access_keys, stub_log, stub_model, write_config

pytestmark = pytest.mark.e2e

PROMPT = "You are Jarvis, a terse butler. Never say 'sir' twice."
PERSONAS = f"""\
personas:
  jarvis:
    use: chat
    system: "{PROMPT}"
    params: {{temperature: 0.3, max_tokens: 64}}
    description: a terse butler
"""
MINE = {"role": "system", "content": "Answer in French."}
HI = {"role": "user", "content": "hi"}
JARVIS = {"role": "system", "content": PROMPT}


def received(gw: ServedGateway) -> dict[str, Any]:
    """The body the engine received last."""
    return dict(stub_log(gw, "qwen")["requests"][-1]["body"])


def test_personas(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = serve(write_config(tmp_path, stub_model("qwen", "--record", aliases="[chat]") + PERSONAS))
    client = gw.client

    # model="jarvis": the persona's prompt first, the client's after, its defaults where unset.
    raw = client.chat.completions.with_raw_response.create(
        model="jarvis",
        messages=[MINE, HI],
        top_p=0.5,
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-modelyard-persona"] == "jarvis"
    assert raw.headers["x-modelyard-model"] == "qwen"
    body = received(gw)
    # One system message (templates refuse two): the persona's prompt, then the client's.
    assert body["messages"] == [{"role": "system", "content": f"{PROMPT}\n\nAnswer in French."}, HI]
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.3, 64, 0.5)

    # What the client sets is the client's; streamed, the same.
    stream = client.chat.completions.create(
        model="jarvis",
        messages=[HI],
        temperature=1.1,
        max_tokens=7,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    body = received(gw)
    assert body["messages"] == [JARVIS, HI]
    assert (body["temperature"], body["max_tokens"]) == (1.1, 7)

    # The decision's trail says so.
    decision = gw.admin("GET", f"/admin/decisions/{raw.headers['x-modelyard-decision']}").json()
    assert decision["trail"][0]["kind"] == "persona" and decision["trail"][0]["name"] == "jarvis"

    # /v1/models lists it, without its system prompt; models.retrieve finds it.
    listed = gw.admin("GET", "/v1/models")
    card = next(c for c in listed.json()["data"] if c["id"] == "jarvis")
    assert card["persona"] == {
        "use": "chat",
        "description": "a terse butler",
        "params": {"temperature": 0.3, "max_tokens": 64},
    }
    assert PROMPT not in listed.text
    assert client.models.retrieve("jarvis").id == "jarvis"

    # POST /v1/personas/jarvis/think: a chat with model set to the persona (none given here).
    thought = client.post("/personas/jarvis/think", cast_to=ChatCompletion, body={"messages": [HI]})
    assert thought.choices[0].message.content
    assert received(gw)["messages"] == [JARVIS, HI]

    # An unknown persona: a 404 with its code.
    with pytest.raises(openai.NotFoundError) as missing:
        client.post("/personas/nobody/think", cast_to=ChatCompletion, body={"messages": [HI]})
    assert missing.value.code == "persona_not_found"
    assert "jarvis" in str(missing.value)

    # A persona is for chat: a text completion naming it is a 400 that says so.
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="jarvis", prompt="hi")
    assert refused.value.code == "unsupported_endpoint"
    assert "chat only" in str(refused.value)


def test_a_key_may_use_a_persona_it_lists_or_whose_model_it_may_use(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    keys = access_keys(
        ("by-model", "sk-model", "models: [chat]"),
        ("by-name", "sk-name", "models: [jarvis]"),
        ("other", "sk-other", "models: [gemma]"),
    )
    models = stub_model("qwen", aliases="[chat]") + stub_model("gemma") + PERSONAS
    gw = serve(write_config(tmp_path, models, keys))
    for key in ("sk-model", "sk-name"):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="jarvis", messages=[HI])
        assert raw.headers["x-modelyard-persona"] == "jarvis"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-other", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="jarvis", messages=[HI])
    assert refused.value.code == "model_not_allowed"
