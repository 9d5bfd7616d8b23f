"""Routing, pure: request features + a cluster snapshot → a Decision, checked rule by rule.

The demo config (examples/demo-two-nodes.yaml) carries S2's routing order as a policy:
force-big, gaming-gate, very-complex, long-prompt, heavy-words, default. S2's order is
"1. explicit force-big signals → 3090 if healthy; 2. GAMING → 3070; 3. NORMAL: token
estimate ≥ threshold → 3090, regex match → 3090; 4. big node unhealthy → fail soft to 3070".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Config, ConfigError, load_config, parse_config
from modelyard.openai_body import features, strip_tags
from modelyard.routing import (
    FORBIDDEN,
    MANUAL_ONLY,
    Cluster,
    Decision,
    Step,
    route,
)

DEMO_PATH = Path(__file__).parent.parent.parent / "examples" / "demo-two-nodes.yaml"
DEMO = load_config(DEMO_PATH, environ={})

NORMAL = ("normal", "open")
GAMING = ("gaming", "gated")
BIG = ("gemma-big", "gemma-small")  # tier big, both allowed
SMALL = ("gemma-small",)
RULES = ("force-big", "gaming-gate", "very-complex", "long-prompt", "heavy-words", "default")
HEAVY = "(?i)\\b(refactor|architecture|prove)\\b"


def cluster(
    mode: tuple[str, str] = NORMAL,
    *,
    reachable: dict[str, bool] | None = None,
    failed: dict[str, str] | None = None,
    remote_down: dict[str, str] | None = None,
) -> Cluster:
    return Cluster(
        modes={"server": ("open", "open"), "gamer": mode},
        reachable={"server": True, "gamer": True} | (reachable or {}),
        failed=failed or {},
        remote_down=remote_down or {},
    )


def chat(model: str, *texts: str, **extra: Any) -> dict[str, Any]:
    """A chat body whose messages alternate user / assistant, ending on the last text."""
    roles = ["user", "assistant"] * len(texts)
    messages = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)]
    return {"model": model, "messages": messages, **extra}


def decide(
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    where: Cluster | None = None,
    config: Config = DEMO,
) -> Decision:
    return route(config, features(body, headers or {}), where or cluster())


def rule_steps(d: Decision) -> list[tuple[str, bool]]:
    return [(s.name, s.ok) for s in d.trail if s.kind == "rule"]


def candidate_steps(d: Decision) -> list[tuple[str, bool, str]]:
    return [(s.name, s.ok, s.why) for s in d.trail if s.kind == "candidate"]


def allowed(*names: str) -> list[tuple[str, bool, str]]:
    return [(n, True, "allowed") for n in names]


def test_demo_config_carries_s2_order() -> None:
    assert [r.name for r in DEMO.policy] == list(RULES)
    assert DEMO.tier_models("big") == list(BIG)
    assert DEMO.tier_models("deep") == ["cloud", "cloud-manual", "gemma-big", "gemma-small"]
    assert DEMO.models["cloud-manual"].manual_only and not DEMO.models["cloud"].manual_only
    assert DEMO.node_of("cloud") == "server"  # a remote model sits on the gateway's node


# --- S2 (1): explicit force-big signals → big, in NORMAL and in GAMING ---------------------

FORCE_SIGNALS = [
    pytest.param(chat("auto", "hello"), {"X-Force-Big": "true"}, "header", id="header"),
    pytest.param(chat("auto", "hello"), {"x-force-big": "TRUE"}, "header", id="header-lower"),
    pytest.param(chat("auto", "hello"), {"X-FORCE-BIG": "True"}, "header", id="header-upper"),
    pytest.param(chat("big", "hello"), {}, "model", id="model-big"),
    pytest.param(chat("auto", "#force_big hello"), {}, "tag", id="tag"),
    pytest.param(chat("auto", "explain #force_big this"), {}, "tag", id="tag-mid-prompt"),
]
SIGNAL_WHY = {
    "header": "header X-Force-Big: true",
    "model": "model big",
    "tag": "prompt tag #force_big",
}


@pytest.mark.parametrize("mode", [NORMAL, GAMING], ids=["normal", "gaming"])
@pytest.mark.parametrize(("body", "headers", "signal"), FORCE_SIGNALS)
def test_force_signal_reaches_big(
    body: dict[str, Any], headers: dict[str, str], signal: str, mode: tuple[str, str]
) -> None:
    d = decide(body, headers, cluster(mode))
    assert d.rule == "force-big"
    assert d.target == "big"
    assert d.candidates == BIG and d.model == "gemma-big"
    assert d.forced is True
    assert d.strip == (("#force_big",) if signal == "tag" else ())
    assert d.trail[0] == Step(
        "rule", "force-big", True, f"{SIGNAL_WHY[signal]}: use big; forces gated nodes"
    )
    assert rule_steps(d) == [("force-big", True)]  # the first rule that uses ends it
    assert candidate_steps(d) == allowed(*BIG)
    assert d.degraded() is None


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(chat("auto", "hello"), {"X-Force-Big": "false"}, id="header-false"),
        pytest.param(chat("auto", "hello"), {"X-Force-Small": "true"}, id="other-header"),
        pytest.param(chat("gemma-small", "hello"), {}, id="model-not-big"),
        pytest.param(chat("auto", "#force_big first", "ok", "now plain"), {}, id="tag-not-last"),
        pytest.param(chat("auto", "#FORCE_BIG hello"), {}, id="tag-is-case-sensitive"),
    ],
)
def test_no_force_signal_in_gaming_stays_small(
    body: dict[str, Any], headers: dict[str, str]
) -> None:
    d = decide(body, headers, cluster(GAMING))
    assert d.forced is False
    assert d.strip == ()
    assert rule_steps(d)[0] == ("force-big", False)
    assert d.candidates == SMALL


# --- S2 (2): GAMING without force → small, whatever the prompt -----------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hello", id="short"),
        pytest.param("a" * 9000, id="long-prompt"),
        pytest.param("please refactor this module", id="heavy-word"),
        pytest.param("#deep think hard", id="deep-tag"),
    ],
)
def test_gaming_without_force_goes_small(text: str) -> None:
    d = decide(chat("auto", text), where=cluster(GAMING))
    assert d.rule == "gaming-gate"
    assert d.target == "small"
    assert d.candidates == SMALL
    assert d.forced is False
    # A prompt tag is a routing instruction: removed even when its rule does not hold.
    assert d.strip == (("#deep",) if "#deep" in text else ())
    assert rule_steps(d) == [("force-big", False), ("gaming-gate", True)]
    assert d.trail[1] == Step("rule", "gaming-gate", True, "node gamer in mode gaming: use small")
    assert candidate_steps(d) == allowed("gemma-small")


def test_gaming_turns_down_big_named_without_force() -> None:
    # "Gaming PC must never unpredictably receive inference load": naming the model is
    # not one of S2's force signals, so the gated node stays closed to it.
    d = decide(chat("gemma-big", "hello"), where=cluster(GAMING))
    assert d.target == "gemma-big"
    assert d.candidates == ()
    assert d.forced is False
    reason = "node gamer is in mode gaming (gated) and nothing forces it"
    assert candidate_steps(d) == [("gemma-big", False, reason)]
    assert d.degraded() == f"gemma-big: {reason}"


def test_gaming_lets_big_in_when_named_and_forced() -> None:
    d = decide(chat("gemma-big", "hello"), {"X-Force-Big": "true"}, cluster(GAMING))
    assert d.target == "gemma-big" and d.candidates == ("gemma-big",) and d.forced is True
    assert "use skipped" in d.trail[0].why and "forces gated nodes" in d.trail[0].why


# --- S2 (3): NORMAL: token estimate ≥ threshold → big; regex → big; else small -------------


@pytest.mark.parametrize(
    ("text", "rule", "candidates", "why"),
    [
        # 5988 chars → 1996 + 4 = 2000 tokens: S2 says ≥ threshold.
        pytest.param(
            "a" * 5988, "long-prompt", BIG, "about 2000 tokens >= 2000: use big", id="at-threshold"
        ),
        pytest.param(
            "a" * 9000, "long-prompt", BIG, "about 3004 tokens >= 2000: use big", id="long"
        ),
        pytest.param("a" * 5985, "default", SMALL, "always: use small", id="one-below"),
        pytest.param(
            "please refactor this",
            "heavy-words",
            BIG,
            f"last message matches {HEAVY}: use big",
            id="refactor",
        ),
        pytest.param(
            "Refactor this",
            "heavy-words",
            BIG,
            f"last message matches {HEAVY}: use big",
            id="refactor-capitalised",
        ),
        pytest.param(
            "the ARCHITECTURE?",
            "heavy-words",
            BIG,
            f"last message matches {HEAVY}: use big",
            id="architecture",
        ),
        pytest.param("refactoring later", "default", SMALL, "always: use small", id="not-a-word"),
        pytest.param("hello there", "default", SMALL, "always: use small", id="short-plain"),
    ],
)
def test_normal_mode_order(text: str, rule: str, candidates: tuple[str, ...], why: str) -> None:
    d = decide(chat("auto", text))
    assert d.rule == rule
    assert d.target == ("big" if candidates == BIG else "small")
    assert d.candidates == candidates
    assert d.forced is False
    assert d.strip == ()
    upto = RULES.index(rule)
    assert rule_steps(d) == [(r, r == rule) for r in RULES[: upto + 1]]
    assert d.trail[upto] == Step("rule", rule, True, why)
    assert candidate_steps(d) == allowed(*candidates)
    assert d.degraded() is None


def test_heavy_word_only_in_an_earlier_message_does_not_count() -> None:
    d = decide(chat("auto", "refactor everything", "sure", "thanks"))
    assert d.rule == "default" and d.candidates == SMALL


# --- S2 (4): big node unhealthy → fail soft to small ---------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "mode", "rule"),
    [
        pytest.param(chat("auto", "hi"), {"X-Force-Big": "true"}, NORMAL, "force-big", id="force"),
        pytest.param(
            chat("auto", "hi"), {"X-Force-Big": "true"}, GAMING, "force-big", id="force-gaming"
        ),
        pytest.param(chat("big", "hi"), {}, NORMAL, "force-big", id="model-big"),
        pytest.param(chat("auto", "a" * 9000), {}, NORMAL, "long-prompt", id="long-prompt"),
        pytest.param(chat("auto", "refactor it"), {}, NORMAL, "heavy-words", id="heavy-words"),
    ],
)
@pytest.mark.parametrize(
    ("down", "reason"),
    [
        pytest.param(
            cluster(reachable={"gamer": False}), "node gamer is unreachable", id="unreachable"
        ),
        pytest.param(
            cluster(failed={"gemma-big": "exited with code 1"}), "exited with code 1", id="failed"
        ),
    ],
)
def test_big_unhealthy_fails_soft_to_small(
    body: dict[str, Any],
    headers: dict[str, str],
    mode: tuple[str, str],
    rule: str,
    down: Cluster,
    reason: str,
) -> None:
    where = Cluster(
        modes={**down.modes, "gamer": mode},
        reachable=down.reachable,
        failed=down.failed,
        remote_down=down.remote_down,
    )
    d = decide(body, headers, where)
    assert d.rule == rule
    assert d.target == "big"
    assert d.candidates == SMALL
    assert candidate_steps(d) == [("gemma-big", False, reason), ("gemma-small", True, "allowed")]
    assert d.degraded() == f"gemma-big: {reason}"


def test_both_nodes_down_leaves_no_candidate() -> None:
    d = decide(
        chat("auto", "refactor it"),
        where=cluster(reachable={"gamer": False}, failed={"gemma-small": "no weights"}),
    )
    assert d.target == "big" and d.candidates == () and d.model is None
    assert d.degraded() == "gemma-big: node gamer is unreachable"


def test_drained_node_is_turned_down_even_when_forced() -> None:
    d = decide(chat("big", "hi"), where=cluster(("off", "drained")))
    assert d.forced is True and d.candidates == SMALL
    assert candidate_steps(d)[0] == ("gemma-big", False, "node gamer is in mode off (drained)")


# --- the remote tier -----------------------------------------------------------------------


def test_deep_tag_with_cloud_up_goes_deep() -> None:
    d = decide(chat("auto", "#deep prove it"))
    assert d.rule == "very-complex" and d.target == "deep"
    assert d.trail[2] == Step(
        "rule", "very-complex", True, "prompt tag #deep; cloud reachable: use deep"
    )
    assert d.candidates == ("cloud", *BIG)
    assert candidate_steps(d) == [
        ("cloud", True, "allowed"),
        ("cloud-manual", False, MANUAL_ONLY),
        *allowed(*BIG),
    ]
    assert d.strip == ("#deep",)
    assert d.degraded() is None  # manual-only is policy, not health


@pytest.mark.parametrize(
    ("where", "candidates"),
    [
        pytest.param(cluster(remote_down={"cloud": "connection refused"}), SMALL, id="remote-down"),
        pytest.param(cluster(reachable={"server": False}), (), id="its-node-unreachable"),
    ],
)
def test_deep_tag_with_cloud_down_falls_to_default(
    where: Cluster, candidates: tuple[str, ...]
) -> None:
    d = decide(chat("auto", "#deep what is two plus two"), where=where)
    assert rule_steps(d)[2] == ("very-complex", False)
    assert d.rule == "default" and d.target == "small"
    assert d.candidates == candidates
    assert d.forced is False


@pytest.mark.parametrize("mode", [NORMAL, GAMING], ids=["normal", "gaming"])
def test_named_tier_deep_with_cloud_down(mode: tuple[str, str]) -> None:
    # No guessing: a client that names a tier gets that tier; the `use` rules that hold
    # (gaming-gate, default) are skipped, and say so.
    d = decide(
        chat("deep", "hello"), where=cluster(mode, remote_down={"cloud": "connection refused"})
    )
    assert d.target == "deep"
    assert d.forced is False
    assert not any(": use " in s.why for s in d.trail)
    assert [s.name for s in d.trail if s.kind == "rule" and "use skipped" in s.why] == (
        ["gaming-gate", "default"] if mode == GAMING else ["default"]
    )
    gated = "node gamer is in mode gaming (gated) and nothing forces it"
    assert candidate_steps(d) == [
        ("cloud", False, "remote down: connection refused"),
        ("cloud-manual", False, MANUAL_ONLY),
        ("gemma-big", mode == NORMAL, "allowed" if mode == NORMAL else gated),
        ("gemma-small", True, "allowed"),
    ]
    assert d.candidates == (BIG if mode == NORMAL else SMALL)
    assert d.degraded() == "cloud: remote down: connection refused"  # not cloud-manual


def test_named_tier_deep_with_cloud_up_blames_nothing() -> None:
    d = decide(chat("deep", "hello"))
    assert d.candidates == ("cloud", *BIG)
    assert ("cloud-manual", False, MANUAL_ONLY) in candidate_steps(d)
    assert d.degraded() is None


@pytest.mark.parametrize("mode", [NORMAL, GAMING], ids=["normal", "gaming"])
def test_naming_manual_only_model_reaches_it_with_no_use_rule(mode: tuple[str, str]) -> None:
    d = decide(chat("cloud-manual", "hello"), where=cluster(mode))
    assert d.target == "cloud-manual"
    assert d.candidates == ("cloud-manual",)
    assert d.forced is False
    assert candidate_steps(d) == allowed("cloud-manual")
    held = [s for s in d.trail if s.kind == "rule" and s.ok]
    assert held and all("use skipped" in s.why for s in held)
    assert not any(": use " in s.why for s in d.trail)


@pytest.mark.parametrize("named", ["cloud-manual", "deep"])
def test_named_target_decision_names_no_rule(named: str) -> None:
    d = decide(chat(named, "hello"))
    assert d.target == named
    assert d.rule is None
    assert d.summary().startswith(f"asked for {named} → {named}")


def test_naming_manual_only_model_while_its_remote_is_down() -> None:
    d = decide(chat("cloud-manual", "hi"), where=cluster(remote_down={"cloud-manual": "503"}))
    assert d.candidates == ()
    assert candidate_steps(d) == [("cloud-manual", False, "remote down: 503")]
    assert d.degraded() == "cloud-manual: remote down: 503"


# --- features() ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        pytest.param({"model": "m", "messages": []}, 0, id="no-messages"),
        pytest.param(chat("m", "abc"), 1 + 4, id="3-chars"),
        pytest.param(chat("m", "abcd"), 2 + 4, id="4-chars-rounds-up"),
        pytest.param(chat("m", "ab", "abcd"), 2 + 8, id="two-messages-sum-then-round"),
        pytest.param(chat("m", "x" * 3000, "", "y"), 1001 + 12, id="empty-message-counts"),
        pytest.param({"model": "m", "prompt": "x" * 10}, 4 + 4, id="completions-prompt"),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "abc"},
                            {"type": "image_url", "image_url": {"url": "data:"}},
                            {"type": "text", "text": "def"},
                        ],
                    }
                ],
            },
            3 + 4,  # "abc\ndef": 7 characters
            id="parts",
        ),
    ],
)
def test_token_estimate(body: dict[str, Any], tokens: int) -> None:
    assert features(body, {}).tokens == tokens
    assert decide(body).tokens == tokens


@pytest.mark.parametrize(
    ("body", "tools", "images"),
    [
        pytest.param(chat("m", "hi"), False, False, id="plain"),
        pytest.param(chat("m", "hi", tools=[{"type": "function"}]), True, False, id="tools"),
        pytest.param(chat("m", "hi", tools=[]), False, False, id="empty-tools"),
        pytest.param(chat("m", "hi", functions=[{"name": "f"}]), True, False, id="functions"),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                        ],
                    }
                ],
            },
            False,
            True,
            id="image-part",
        ),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
                    {"role": "assistant", "content": "a cat"},
                    {"role": "user", "content": "and now?"},
                ],
            },
            False,
            True,
            id="image-in-earlier-message",
        ),
        pytest.param(chat("m", "see image_url here"), False, False, id="text-mentions-image"),
    ],
)
def test_tools_and_images(body: dict[str, Any], tools: bool, images: bool) -> None:
    f = features(body, {})
    assert (f.tools, f.images) == (tools, images)


@pytest.mark.parametrize(
    ("body", "last"),
    [
        pytest.param(chat("m", "first", "reply", "second"), "second", id="last-of-two"),
        pytest.param(chat("m", "first", "reply"), "first", id="assistant-last"),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "question"},
                    {"role": "tool", "content": "result"},
                ],
            },
            "question",
            id="tool-after-user",
        ),
        pytest.param(
            {"model": "m", "messages": [{"role": "system", "content": "s"}]}, "", id="no-user"
        ),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "one"},
                            {"type": "text", "text": "two"},
                        ],
                    }
                ],
            },
            "one\ntwo",
            id="parts-joined",
        ),
        pytest.param({"model": "m", "prompt": "complete me"}, "complete me", id="completions"),
    ],
)
def test_last_user_message(body: dict[str, Any], last: str) -> None:
    assert features(body, {}).last_user == last


def test_features_model_and_headers() -> None:
    f = features({"model": "big", "messages": []}, {"X-Force-Big": "True", "Accept": "x"})
    assert f.model == "big"
    assert dict(f.headers) == {"x-force-big": "True", "accept": "x"}
    assert features({"messages": []}, {}).model == ""


def test_features_does_not_change_the_body() -> None:
    body = chat("m", "#force_big hi", tools=[{"type": "function"}])
    before = repr(body)
    features(body, {"X": "y"})
    assert repr(body) == before


# --- strip_tags() --------------------------------------------------------------------------


def test_strip_tags_string_content_last_user_only() -> None:
    body = chat("auto", "#force_big earlier", "ok", "#force_big now please", stream=True)
    out = strip_tags(body, ("#force_big",))
    assert [m["content"] for m in out["messages"]] == [
        "#force_big earlier",
        "ok",
        "now please",
    ]
    assert out["stream"] is True and out["model"] == "auto"
    assert body["messages"][2]["content"] == "#force_big now please"  # original unchanged
    assert out is not body and out["messages"] is not body["messages"]


def test_strip_tags_parts_content() -> None:
    image = {"type": "image_url", "image_url": {"url": "u"}}
    body = {
        "model": "auto",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "#force_big old"}]},
            {"role": "assistant", "content": "fine"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look #force_big"},
                    image,
                    {"type": "text", "text": "#deep and #force_big again"},
                ],
            },
            {"role": "assistant", "content": "#force_big is not the user's"},
        ],
    }
    out = strip_tags(body, ("#force_big", "#deep"))
    assert out["messages"][2]["content"] == [
        {"type": "text", "text": "look"},
        image,
        {"type": "text", "text": "and  again"},
    ]
    assert out["messages"][0] == body["messages"][0]
    assert out["messages"][0]["content"][0]["text"] == "#force_big old"
    assert out["messages"][3]["content"] == "#force_big is not the user's"
    assert body["messages"][2]["content"][0]["text"] == "look #force_big"  # original unchanged
    assert body["messages"][2]["content"][2]["text"] == "#deep and #force_big again"


def test_strip_tags_without_patterns_or_messages() -> None:
    body = chat("auto", "#force_big hi")
    assert strip_tags(body, ()) == body
    completion = {"model": "auto", "prompt": "#force_big hi"}
    assert strip_tags(completion, ("#force_big",)) == completion


def test_routing_then_stripping_forwards_a_clean_prompt() -> None:
    body = chat("auto", "#force_big refactor the parser")
    d = decide(body, where=cluster(GAMING))
    out = strip_tags(body, d.strip)
    assert out["messages"][-1]["content"] == "refactor the parser"


# --- forbid rules ---------------------------------------------------------------------------

TWO_REMOTES = """\
models:
  a:
    engine: remote
    url: http://127.0.0.1:9/v1
  b:
    engine: remote
    url: http://127.0.0.1:9/v1
tiers:
  t: [a, b]
"""
FORBID = parse_config(
    TWO_REMOTES
    + """\
policy:
  - name: no-tools-on-a
    tools: true
    forbid: [a]
  - name: to-t
    use: t
""",
    "/etc/modelyard/test.yaml",
    {},
)
ONLY_HEADER = parse_config(
    TWO_REMOTES
    + """\
policy:
  - name: header-only
    header: {X-Route: t}
    use: t
""",
    "/etc/modelyard/test.yaml",
    {},
)


def test_forbid_turns_model_down_and_routing_goes_on() -> None:
    d = decide(chat("auto", "hi", tools=[{"type": "function"}]), config=FORBID)
    assert d.rule == "to-t" and d.target == "t"
    assert d.candidates == ("b",)
    assert d.trail[0] == Step("rule", "no-tools-on-a", True, "tools given; forbids a")
    assert d.trail[1] == Step("rule", "to-t", True, "always: use t")
    assert candidate_steps(d) == [("a", False, FORBIDDEN), ("b", True, "allowed")]
    assert d.degraded() is None  # forbidden is policy, not health
    assert d.forced is False


def test_forbid_does_not_hold_without_tools() -> None:
    d = decide(chat("auto", "hi"), config=FORBID)
    assert d.trail[0] == Step("rule", "no-tools-on-a", False, "conditions do not hold")
    assert d.candidates == ("a", "b")


def test_forbid_applies_to_a_named_model() -> None:
    d = decide(chat("a", "hi", tools=[{"type": "function"}]), config=FORBID)
    assert d.target == "a" and d.candidates == ()
    assert candidate_steps(d) == [("a", False, FORBIDDEN)]
    assert d.degraded() is None


# --- auto with nothing to use ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["auto", "no-such-model"])
def test_auto_with_no_rule_holding_has_no_target(model: str) -> None:
    d = decide(chat(model, "hi"), config=ONLY_HEADER)
    assert d.target is None and d.rule is None
    assert d.candidates == () and d.model is None
    assert d.trail == (Step("rule", "header-only", False, "conditions do not hold"),)


@pytest.mark.parametrize(
    ("model", "headers", "rule"),
    [
        pytest.param("auto", {"x-route": "T"}, "header-only", id="auto-by-rule"),
        pytest.param("t", {}, None, id="tier-named"),
    ],
)
def test_target_from_rule_or_named_tier(
    model: str, headers: dict[str, str], rule: str | None
) -> None:
    d = decide(chat(model, "hi"), headers, config=ONLY_HEADER)
    assert d.target == "t" and d.rule == rule and d.candidates == ("a", "b")


# --- config errors located by file:line and key ---------------------------------------------

ONE_MODEL = "models:\n  m:\n    engine: remote\n    url: http://127.0.0.1:9/v1\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            "tiers:\n  t: [m, nope]\n",
            ["test.yaml:6: tiers.t[1]: 'nope' is neither a model nor a tier"],
            id="tier-unknown-model",
        ),
        pytest.param(
            "tiers:\n  a: [b]\n  b: [a]\n",
            [
                "test.yaml:6: tiers.a: tiers loop: a -> b -> a",
                "test.yaml:7: tiers.b: tiers loop: b -> a -> b",
            ],
            id="tier-loop",
        ),
        pytest.param(
            "tiers:\n  m: []\n",
            ["test.yaml:6: tiers.m: 'm' is already a model name or alias"],
            id="tier-named-like-model",
        ),
        pytest.param(
            "policy:\n  - name: r\n    use: nope\n",
            ["test.yaml:7: policy[0].use: 'nope' is neither a model nor a tier"],
            id="rule-unknown-tier",
        ),
        pytest.param(
            "policy:\n  - name: r\n    last_message: '(unclosed'\n    use: m\n",
            ["test.yaml:7: policy[0].last_message: not a valid regular expression"],
            id="bad-regex",
        ),
        pytest.param(
            "policy:\n  - name: r\n    any:\n      - tag: '[bad'\n    use: m\n",
            ["test.yaml:8: policy[0].any[0].tag: not a valid regular expression"],
            id="bad-tag-regex-in-any",
        ),
        pytest.param(
            "policy:\n  - name: r\n    node_mode: {ghost: gaming}\n    use: m\n",
            ["test.yaml:7: policy[0].node_mode: node 'ghost' does not exist"],
            id="node-mode-unknown-node",
        ),
        pytest.param(
            "policy:\n  - name: r\n    node_mode: {local: gaming}\n    use: m\n",
            ["test.yaml:7: policy[0].node_mode: node local has no mode 'gaming' (open, drained)"],
            id="node-mode-unknown-mode",
        ),
        pytest.param(
            "policy:\n  - name: r\n    tools: true\n",
            ["test.yaml:6: policy[0]: a rule needs `use`, `forbid` or `force`"],
            id="rule-does-nothing",
        ),
        pytest.param(
            "policy:\n  - name: r\n    forbid: [ghost]\n",
            ["test.yaml:7: policy[0].forbid: 'ghost' is not a model"],
            id="forbid-unknown-model",
        ),
        pytest.param(
            "policy:\n  - name: r\n    reachable: ghost\n    use: m\n",
            ["test.yaml:7: policy[0].reachable: 'ghost' is not a model"],
            id="reachable-unknown-model",
        ),
    ],
)
def test_policy_config_errors(extra: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ONE_MODEL + extra, "/etc/modelyard/test.yaml", {})
    issues = [str(i) for i in info.value.issues]
    assert len(issues) == len(expected), issues
    for issue, want in zip(issues, expected, strict=True):
        assert issue.startswith("/etc/modelyard/" + want), issues


WINDOWS = """\
models:
  short: {engine: llama.cpp, weights: s.gguf, context: 4096, parallel: 2}
  long: {engine: llama.cpp, weights: l.gguf, context: 32768}
  open: {engine: remote, url: "http://x/v1"}
tiers:
  chat: [short, long]
"""


@pytest.mark.parametrize(
    ("model", "chars", "max_tokens", "candidates", "why"),
    [
        pytest.param("chat", 300, 100, ("short", "long"), None, id="fits: both"),
        pytest.param(
            "chat",
            3000,
            600,
            ("long",),
            "context too long: about 1604 tokens is 78% of its 2048-token window",
            id="over 75% of a slot's window: the larger model takes it",
        ),
        pytest.param(
            "short",
            3000,
            600,
            (),
            "context too long: about 1604 tokens is 78% of its 2048-token window",
            id="named, too long: nothing left",
        ),
        pytest.param("open", 300000, 0, ("open",), None, id="no known window: not checked"),
    ],
)
def test_context_window(
    model: str, chars: int, max_tokens: int, candidates: tuple[str, ...], why: str | None
) -> None:
    config = parse_config(WINDOWS, "/etc/modelyard/test.yaml", {})
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x" * chars}],
    }
    decision = route(config, features(body, {}), Cluster())
    assert decision.candidates == candidates
    refused = [s.why for s in decision.trail if s.kind == "candidate" and not s.ok]
    assert refused[0].startswith(why) if why else refused == []


PATTERNS = """\
models:
  small: {engine: command, command: [x, "{port}"]}
  big: {engine: command, command: [x, "{port}"]}
tiers:
  fast: [small, big]
personas:
  coder: {use: big, system: You write code.}
model_patterns:
  "claude-*-haiku-*": fast
  "claude-*": coder
  "gpt-4*": big
"""


@pytest.mark.parametrize(
    ("asked", "target", "pattern", "candidates"),
    [
        ("claude-3-5-haiku-20241022", "fast", "claude-*-haiku-*", ("small", "big")),
        ("claude-sonnet-4-5", "big", "claude-*", ("big",)),  # a persona: its model
        ("gpt-4o-mini", "big", "gpt-4*", ("big",)),
        ("small", "small", None, ("small",)),  # the config's own names come first
    ],
)
def test_names_a_client_picks_are_mapped_by_pattern(
    asked: str, target: str, pattern: str | None, candidates: tuple[str, ...]
) -> None:
    config = parse_config(PATTERNS, "m.yaml", {})
    clear = Cluster(modes={"local": ("open", "open")}, reachable={"local": True})
    d = route(config, features({"model": asked, "messages": []}, {}), clear)
    assert (d.asked, d.target, d.candidates) == (asked, target, candidates)
    if pattern is None:
        assert all(s.kind != "pattern" for s in d.trail)
    else:
        assert d.trail[0] == Step("pattern", pattern, True, f"{asked} matches {pattern}: use "
                                  + ("coder" if pattern == "claude-*" else target))  # fmt: skip
    if pattern == "claude-*":
        assert d.persona == "coder" and d.system == "You write code."


def test_an_unmatched_name_and_a_bad_pattern_target() -> None:
    config = parse_config(PATTERNS, "m.yaml", {})
    clear = Cluster(modes={"local": ("open", "open")}, reachable={"local": True})
    assert route(config, features({"model": "llama3", "messages": []}, {}), clear).target is None
    with pytest.raises(ConfigError, match=r"model_patterns.mistral-\*: 'ghost' is not a model"):
        parse_config(PATTERNS + '  "mistral-*": ghost\n', "m.yaml", {})
