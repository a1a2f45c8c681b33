"""Shared fixtures for the training tests: a small BPE tokenizer and prepared pretrain / SFT folders,
built once per session from a deterministic synthetic corpus (tiny vocab = fast tiny models)."""

from __future__ import annotations

import json
import random

import pytest

WORDS = (
    "the cat dog bird sat ran flew on under over a mat log tree and then quickly slowly happy sad "
    "red blue green small big old new sun moon rain wind water fire stone river hill road house"
).split()


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sents = []
        for _ in range(rng.randint(3, 8)):
            sents.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + ".")
        docs.append(f"Story {i}. " + " ".join(sents))
    return docs


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory):
    from chinwag.tokenizer.train import train_bpe

    tok = train_bpe(synthetic_docs(200, seed=1), vocab_size=384, show_progress=False)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return str(path)


@pytest.fixture(scope="session")
def pretrain_text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    return write_jsonl(folder / "docs.jsonl", ({"text": d} for d in synthetic_docs(120, seed=2)))


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory, pretrain_text, tok_path):
    from chinwag.data.prepare import prepare

    out = tmp_path_factory.mktemp("pre")
    prepare(pretrain_text, out, tokenizer=tok_path, mode="pretrain", val_fraction=0.1, seed=0, progress=False)
    return str(out)


def conversations(n: int, seed: int = 3, long_every: int = 0) -> list[dict]:
    """Chats; every `long_every`-th one opens with a long user turn so its reply lies beyond 128 tokens."""
    rng = random.Random(seed)
    docs = synthetic_docs(n, seed=seed)
    out = []
    for i in range(n):
        user = docs[i] * (8 if long_every and i % long_every == 0 else 1)
        reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return out


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory, tok_path):
    from chinwag.data.prepare import prepare

    folder = tmp_path_factory.mktemp("sft")
    src = write_jsonl(folder / "chats.jsonl", conversations(60, long_every=4))
    out = folder / "prepared"
    prepare(src, out, tokenizer=tok_path, mode="sft", val_fraction=0.1, seed=0, progress=False)
    return str(out)
