"""The error codes: one table of code, status and meaning, and docs/faults.md listing it."""

from __future__ import annotations

import re
from http import HTTPStatus
from pathlib import Path

import orjson
import pytest

from modelyard.errors import ERRORS, Code, Refusal, Refused, UpstreamUnavailable, status_of
from modelyard.gateway.errors import error_type, sse_error

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "faults.md"
HEADING = "## Error codes"
ROW = re.compile(r"^\| `(?P<code>[^`]+)` \| (?P<status>\d{3}) \| (?P<meaning>.+) \|$")


def doc_rows() -> list[tuple[str, int, str]]:
    """The rows of the table under ``HEADING`` in docs/faults.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    assert HEADING in lines, f"docs/faults.md has no {HEADING!r} section"
    rows = []
    for line in lines[lines.index(HEADING) + 1 :]:
        if line.startswith("#"):
            break
        found = ROW.match(line)
        if found:
            rows.append((found["code"], int(found["status"]), found["meaning"]))
    return rows


def table() -> str:
    """The table docs/faults.md should hold, as Markdown."""
    rows = [f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in ERRORS.items()]
    return "\n".join(["| code | status | meaning |", "| --- | --- | --- |", *rows])


def test_every_code_has_a_status_and_a_meaning() -> None:
    assert list(ERRORS) == list(Code), "ERRORS lists every Code once, in the enum's order"
    for code, (status, meaning) in ERRORS.items():
        assert status_of(code) == status
        assert 400 <= status < 600 and HTTPStatus(status), code
        assert meaning and "|" not in meaning and "\n" not in meaning, code
        assert code.value == code.name.lower(), "a code's name is its wire word, upper-cased"


def test_the_docs_list_every_code_with_its_status_and_meaning() -> None:
    expected = [(code.value, status, meaning) for code, (status, meaning) in ERRORS.items()]
    assert doc_rows() == expected, (
        f"docs/faults.md's {HEADING!r} table differs from modelyard.errors.ERRORS; "
        f"it should read:\n\n{table()}\n"
    )


def test_a_refusal_takes_its_status_from_its_code_unless_told() -> None:
    assert Refusal(Code.MODEL_NOT_FOUND, "no").status == 404
    assert Refusal(Code.MODEL_UNAVAILABLE, "busy", status=429).status == 429
    assert Refusal(None, "not JSON", status=400).code is None
    with pytest.raises(ValueError, match="needs its status"):
        Refusal(None, "no code, no status")


def test_the_exceptions_keep_their_attributes() -> None:
    refused = Refused(Code.SWAP_REFUSED, "pinned", 2.0)
    assert (refused.status, refused.reason, refused.retry_after, refused.timed_out) == (
        409, "pinned", 2.0, False,
    )  # fmt: skip
    assert str(refused) == "pinned"
    assert Refused(Code.MODEL_UNAVAILABLE, "full", status=429).status == 429
    assert UpstreamUnavailable("slow", Code.TIMEOUT).status == 504
    broken = UpstreamUnavailable("broke")
    assert (broken.code, broken.status) == (Code.MODEL_UNAVAILABLE, 502)


def test_a_code_goes_on_the_wire_as_its_word() -> None:
    event = sse_error("cut", Code.TIMEOUT)
    assert orjson.loads(event.removeprefix(b"data: "))["error"]["code"] == "timeout"
    assert orjson.loads(orjson.dumps({"code": Code.NO_ROUTE})) == {"code": "no_route"}
    assert f"{Code.INVALID_HTTP}" == "invalid_http"
    assert error_type(status_of(Code.RATE_LIMITED)) == "rate_limit_error"
