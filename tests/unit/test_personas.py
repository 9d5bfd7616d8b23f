"""Personas, pure: their config (located errors), their routing and their edits of a body.

A persona names a model, alias or tier (``use``), a system prompt and sampling defaults. A
chat request naming it is routed as if it named ``use``; the persona's system prompt goes
first, before any the client sent, and each default only where the body does not set it.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from modelyard.config import Config, ConfigError, parse_config
from modelyard.openai_body import apply_edits, features
from modelyard.routing import Cluster, Decision, route

CONFIG = """\
models:
  a: {engine: command, command: [server, "{port}"], aliases: [chat]}
  b: {engine: command, command: [server, "{port}"]}
tiers:
  small: [a, b]
policy:
  - {name: hash-b, tag: "#b", use: b}
personas:
  jarvis:
    use: chat
    system: You are Jarvis, terse and exact.
    params: {temperature: 0.3, max_tokens: 64, reasoning_effort: low}
    description: a butler
  scout:
    use: small
"""


def parse(text: str) -> Config:
    return parse_config(text, "/etc/modelyard/test.yaml", {})


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(issue) for issue in info.value.issues]


CFG = parse(CONFIG)


def with_persona(block: str) -> str:
    """CONFIG with one more persona (or more keys) under ``personas:``."""
    return CONFIG + "".join(f"  {line}\n" for line in block.splitlines())


# --- the config ------------------------------------------------------------------------------

SPEAKING = """\
models:
  chat: {engine: command, command: [server, "{port}"]}
  voice: {engine: speech, tts: hibari}
  ears: {engine: speech, stt: whisper-tiny.en}
personas:
  jarvis: {use: chat, voice: voice, ears: ears}
  leonardo: {use: chat, voice: {model: voice, voice: heart}}
"""


def test_a_persona_speaks_and_listens_through_speech_models() -> None:
    cfg = parse(SPEAKING)
    jarvis, leonardo = cfg.personas["jarvis"], cfg.personas["leonardo"]
    assert jarvis.voice is not None and jarvis.voice.model == "voice"
    assert jarvis.voice.voice is None and jarvis.ears == "ears"
    assert leonardo.voice is not None and leonardo.voice.voice == "heart"
    assert leonardo.ears is None


@pytest.mark.parametrize(
    ("persona", "key", "says"),
    [
        ("{use: chat, voice: {model: voice, voice: alloy}}", "personas.x.voice",
         "'voice' has no voice 'alloy'; it has: heart"),
        ("{use: chat, voice: ears}", "personas.x.voice", "set models.ears.tts"),
        ("{use: chat, ears: voice}", "personas.x.ears", "set models.voice.stt"),
    ],
)  # fmt: skip
def test_a_persona_s_voice_and_ears_are_checked(persona: str, key: str, says: str) -> None:
    found = errors(SPEAKING + f"  x: {persona}\n")
    assert any(f": {key}: " in e and says in e for e in found), found


def test_personas_read() -> None:
    jarvis = CFG.personas["jarvis"]
    assert jarvis.use == "chat"
    assert jarvis.system == "You are Jarvis, terse and exact."
    assert jarvis.params.temperature == 0.3 and jarvis.params.max_tokens == 64
    assert jarvis.params.top_p is None and jarvis.params.reasoning_effort == "low"
    assert jarvis.description == "a butler"
    scout = CFG.personas["scout"]
    assert (scout.use, scout.system, scout.description) == ("small", None, None)
    assert parse("models: {}\n").personas == {}


@pytest.mark.parametrize(
    ("block", "key", "says"),
    [
        ("x: {use: ghost}", "personas.x.use", "'ghost' is neither a model, an alias nor a tier"),
        ("x: {use: jarvis}", "personas.x.use", "may not use another persona"),
        ("a: {use: b}", "personas.a", "'a' is already a model name or alias"),
        ("chat: {use: b}", "personas.chat", "'chat' is already a model name or alias"),
        ("small: {use: b}", "personas.small", "'small' is already a tier"),
        ("auto: {use: b}", "personas.auto", "`auto` is the policy's name"),
        ("'x y': {use: b}", "personas.x y", "a persona name is letters, digits"),
        ("x: {system: hi}", "personas.x.use", "required key is missing"),
        ("x: {use: b, voice: alloy}", "personas.x.voice", "'alloy' is not a model"),
        ("x: {use: b, voice: b}", "personas.x.voice", "'b' does not serve speech"),
        ("x: {use: b, voice: {model: b, tone: low}}", "personas.x.voice.tone", "unknown key"),
        ("x: {use: b, ears: chat}", "personas.x.ears", "'chat' does not serve transcriptions"),
        ("x: {use: b, params: {temperature: 2.5}}", "personas.x.params.temperature", "2"),
        ("x: {use: b, params: {temperature: -1}}", "personas.x.params.temperature", "0"),
        ("x: {use: b, params: {top_p: 0}}", "personas.x.params.top_p", "greater than 0"),
        ("x: {use: b, params: {top_p: 1.5}}", "personas.x.params.top_p", "1"),
        ("x: {use: b, params: {max_tokens: 0}}", "personas.x.params.max_tokens", "1"),
        ("x: {use: b, params: {reasoning_effort: max}}", "personas.x.params.reasoning_effort", ""),
        ("x: {use: b, params: {seed: 1}}", "personas.x.params.seed", "unknown key"),
    ],
)
def test_persona_errors_are_located(block: str, key: str, says: str) -> None:
    found = errors(with_persona(block))
    assert any(f": {key}: " in e and says in e for e in found), found
    assert all(": personas." in e for e in found), found  # nothing else is blamed


def test_persona_cross_checks_run_beside_type_errors() -> None:
    text = with_persona("x: {use: ghost}\ny: {use: b, params: {top_p: 9}}").replace(
        "aliases: [chat]}", "aliases: [chat], ttl: soon}"
    )
    where = sorted(e.split(": ", 2)[1] for e in errors(text))
    assert where == ["models.a.ttl", "personas.x.use", "personas.y.params.top_p"]


def test_a_key_may_list_a_persona() -> None:
    text = CONFIG + "access:\n  keys:\n    - {name: k, key: s, models: [jarvis, nope]}\n"
    found = errors(text)
    assert len(found) == 1 and "access.keys[0].models[1]" in found[0], found


# --- routing ---------------------------------------------------------------------------------


def chat(model: str, *messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": r, "content": c} for r, c in messages], **extra}


def decide(body: dict[str, Any], endpoint: str = "chat") -> Decision:
    return route(CFG, features(body, {}, endpoint=endpoint), Cluster())


@pytest.mark.parametrize(
    ("asked", "target", "candidates", "persona"),
    [
        ("jarvis", "a", ("a",), "jarvis"),  # its use, an alias, resolved
        ("scout", "small", ("a", "b"), "scout"),  # a tier: its models in order
        ("chat", "a", ("a",), None),  # the alias itself: no persona
        ("small", "small", ("a", "b"), None),
    ],
)
def test_a_persona_routes_as_its_use(
    asked: str, target: str, candidates: tuple[str, ...], persona: str | None
) -> None:
    d = decide(chat(asked, ("user", "hi")))
    assert (d.asked, d.target, d.candidates, d.persona) == (asked, target, candidates, persona)
    kinds = [s.kind for s in d.trail]
    assert (kinds[0] == "persona") == (persona is not None)
    assert d.as_dict()["persona"] == persona


def test_the_trail_says_the_persona_was_applied() -> None:
    d = decide(chat("jarvis", ("user", "hi")))
    step = d.trail[0]
    assert (step.kind, step.name, step.ok) == ("persona", "jarvis", True)
    assert step.why == (
        "use chat; system prompt first, temperature=0.3 where unset, max_tokens=64 where "
        "unset, reasoning_effort=low where unset"
    )
    assert d.system == "You are Jarvis, terse and exact."
    assert d.defaults == (("temperature", 0.3), ("max_tokens", 64), ("reasoning_effort", "low"))
    assert "persona jarvis" not in d.summary() and d.summary().startswith("asked for jarvis")


def test_the_persona_max_tokens_counts_where_the_client_sets_none() -> None:
    assert decide(chat("jarvis", ("user", "hi"))).features.max_tokens == 64
    assert decide(chat("jarvis", ("user", "hi"), max_tokens=9)).features.max_tokens == 9
    assert decide(chat("jarvis", ("user", "hi"))).features.model == "jarvis"  # replayable


def test_a_persona_serves_chat_only() -> None:
    for endpoint in ("completions", "embeddings"):
        d = decide({"model": "jarvis", "prompt": "hi"}, endpoint)
        assert d.target is None and d.candidates == () and d.persona is None
        assert [(s.kind, s.ok) for s in d.trail] == [("persona", False)]
        assert "chat only" in d.trail[0].why


def test_policy_rules_see_the_persona_s_use() -> None:
    # A `use` rule decides for `auto` only: a persona names its use, as a client would.
    d = decide(chat("jarvis", ("user", "hi #b")))
    assert d.target == "a" and d.strip == ("#b",)


# --- the edit --------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are Jarvis, terse and exact."}


@pytest.mark.parametrize(
    ("body", "messages", "set_"),
    [
        (  # no system message of its own: the persona's first, every default
            chat("jarvis", ("user", "hi")),
            [SYSTEM, {"role": "user", "content": "hi"}],
            {"temperature": 0.3, "max_tokens": 64, "reasoning_effort": "low"},
        ),
        (  # the client's system message kept, after the persona's, in one message
            chat("jarvis", ("system", "Answer in French."), ("user", "hi")),
            [{"role": "system", "content": "You are Jarvis, terse and exact.\n\nAnswer in French."},
             {"role": "user", "content": "hi"}],
            {"temperature": 0.3, "max_tokens": 64, "reasoning_effort": "low"},
        ),
        (  # what the client sets is the client's, even a null
            chat("jarvis", ("user", "hi"), temperature=0.9, reasoning_effort=None),
            [SYSTEM, {"role": "user", "content": "hi"}],
            {"max_tokens": 64},
        ),
        (  # max_completion_tokens is max_tokens under its newer name
            chat("jarvis", ("user", "hi"), max_completion_tokens=5, top_p=0.5),
            [SYSTEM, {"role": "user", "content": "hi"}],
            {"temperature": 0.3, "reasoning_effort": "low"},
        ),
    ],
)  # fmt: skip
def test_the_persona_edit(
    body: dict[str, Any], messages: list[dict[str, Any]], set_: dict[str, Any]
) -> None:
    before = orjson.dumps(body)
    out = apply_edits(body, decide(body))
    assert orjson.dumps(body) == before  # the client's body is not changed in place
    assert out["messages"] == messages
    assert {k: out[k] for k in out if k not in body} == set_
    # Everything else as the client sent it, in its order, byte for byte.
    kept = {k: v for k, v in out.items() if k in body and k != "messages"}
    assert orjson.dumps(kept) == orjson.dumps({k: v for k, v in body.items() if k != "messages"})
    assert list(out)[: len(body)] == list(body)


def test_a_persona_without_system_prompt_or_defaults_leaves_messages_alone() -> None:
    body = chat("scout", ("system", "mine"), ("user", "hi"), stream=True)
    original = copy.deepcopy(body)
    out = apply_edits(body, decide(body))
    assert out == original and body == original


def test_tags_are_stripped_and_the_persona_applied_together() -> None:
    body = chat("jarvis", ("user", "hi #b"))
    out = apply_edits(body, decide(body))
    assert out["messages"] == [SYSTEM, {"role": "user", "content": "hi"}]
    assert body["messages"][0]["content"] == "hi #b"


def test_no_persona_no_edit() -> None:
    body = chat("chat", ("user", "hi"))
    assert apply_edits(body, decide(body)) is body
