"""The GGUF metadata reader, checked against files written by the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from modelyard.gguf_file import read_facts, read_metadata, read_name, shards


def write(path: Path, arch: str = "qwen3moe", experts: int = 128) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Tiny Test MoE")
    w.add_context_length(40960)
    w.add_block_count(48)
    w.add_head_count(32)
    w.add_head_count_kv(4)
    w.add_key_length(128)
    w.add_value_length(128)
    w.add_embedding_length(2048)
    w.add_expert_count(experts)
    w.add_float32("test.scale", 0.5)
    w.add_bool("test.flag", True)
    w.add_array("test.small", [1, 2, 3])
    w.add_token_list([f"tok{i}" for i in range(5000)])  # long string array: skipped
    w.add_token_scores([0.0] * 5000)  # long float array: skipped
    w.add_tensor("blk.0.weight", __import__("numpy").zeros((4, 4), dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_metadata_matches_the_gguf_package(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write(path)
    meta = read_metadata(path)
    reference = gguf.GGUFReader(str(path))
    for key in (
        "general.name",
        "qwen3moe.block_count",
        "qwen3moe.context_length",
        "test.flag",
        "test.small",
    ):
        assert meta[key] == reference.get_field(key).contents()
    assert meta["test.scale"] == pytest.approx(0.5)
    assert meta["tokenizer.ggml.tokens"] is None  # skipped, not kept


def test_facts(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write(path)
    facts = read_facts(path)
    assert (facts.architecture, facts.block_count, facts.head_count_kv) == ("qwen3moe", 48, 4)
    assert (facts.key_length, facts.value_length, facts.context_length) == (128, 128, 40960)
    assert facts.moe and facts.size_bytes == path.stat().st_size
    assert read_name(path) == "Tiny Test MoE"


def test_dense_model_is_not_moe(tmp_path: Path) -> None:
    path = tmp_path / "dense.gguf"
    write(path, arch="llama", experts=0)
    assert not read_facts(path).moe


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_facts(path)


def test_real_gemma_facts(gemma: Path) -> None:
    facts = read_facts(gemma)
    assert (facts.architecture, facts.block_count, facts.head_count_kv) == ("gemma3", 18, 1)
    assert facts.key_length == 256 and not facts.moe


def test_shards() -> None:
    first = Path("/m/qwen-00001-of-00003.gguf")
    assert [p.name for p in shards(first)] == [
        "qwen-00001-of-00003.gguf",
        "qwen-00002-of-00003.gguf",
        "qwen-00003-of-00003.gguf",
    ]
    assert shards(Path("/m/one.gguf")) == [Path("/m/one.gguf")]
