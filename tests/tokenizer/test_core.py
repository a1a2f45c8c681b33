"""Tokenizer core: specials, persistence, validation, pretrained vocabularies, merges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chinwag.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerFileError

from .conftest import corpus_texts


def test_specials_follow_the_ranks(tok):
    n = len(tok.ranks)
    assert len(SPECIAL_TOKENS) == 16
    assert [tok.special_tokens[s] for s in SPECIAL_TOKENS] == list(range(n, n + 16))
    assert tok.vocab_size == len(tok) == n + 16 == 1024
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (n, n + 1, n + 2)
    assert (tok.system_id, tok.user_id, tok.assistant_id, tok.end_id) == (n + 3, n + 4, n + 5, n + 6)
    assert tok.special_id("end") == tok.special_id("<|end|>") == tok.end_id
    assert tok.special_id("reserved_8") == n + 15
    with pytest.raises(KeyError, match="no special token"):
        tok.special_id("nope")


@pytest.mark.parametrize("s", ["<|assistant|>", "<|end|>", "<|bos|>", "<|eos|><|pad|>", "<|reserved_3|>"])
def test_encode_never_yields_special_ids(tok, s):
    ids = tok.encode(f"user says {s} here")
    assert not any(tok.is_special(i) for i in ids)
    assert tok.decode(ids) == f"user says {s} here"


def test_every_byte_is_a_token_no_unknowns(tok):
    for b in range(256):
        assert bytes([b]) in tok.ranks
    text = "".join(chr(c) for c in range(256)) + "\U0010ffff\ufffd\x00"
    ids = tok.encode(text)
    assert tok.decode(ids) == text


def test_decode_replaces_invalid_utf8_and_rejects_unknown_ids(tok):
    ids = tok.encode("é")  # 2 bytes: cutting it yields invalid UTF-8
    first = [tok.ranks[b"\xc3"]]
    assert tok.decode(first) == "\ufffd"
    assert tok.decode_bytes(first) == b"\xc3"
    assert tok.decode(ids) == "é"
    with pytest.raises(ValueError, match="not in this tokenizer"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.token_bytes(-1)
    assert tok.decode([tok.end_id]) == "<|end|>"


def test_token_byte_lengths(tok):
    lens = tok.token_byte_lengths()
    assert isinstance(lens, np.ndarray) and lens.shape == (tok.vocab_size,)
    assert all(lens[i] == 0 for i in tok.special_tokens.values())
    assert all(lens[i] == len(b) for b, i in tok.ranks.items())
    ids = tok.encode("To be, or not to be: that is the question.")
    assert lens[ids].sum() == len(b"To be, or not to be: that is the question.")


def test_encode_batch_matches_encode(tok):
    texts = ["", "a", "hello there", "x" * 30_000]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(["y" * 25_000, "z " * 12_000]) == [
        tok.encode("y" * 25_000),
        tok.encode("z " * 12_000),
    ]


def test_save_load_roundtrip(tok, tmp_path):
    p = tok.save(tmp_path / "sub" / "tok.json")
    d = json.loads(p.read_text())
    assert d["format"] == "chinwag-bpe" and d["version"] == 1 and d["pattern"] == tok.pattern
    assert len(d["ranks"]) == len(tok.ranks) and d["special_tokens"]["<|bos|>"] == tok.bos_id
    again = Tokenizer.load(p)
    assert again == tok
    assert again.encode("Wherefore art thou?") == tok.encode("Wherefore art thou?")
    assert Tokenizer.from_spec(str(p)) == tok
    assert not list(p.parent.glob("*.tmp"))  # atomic write leaves no temp file behind


def test_from_spec_folder_and_errors(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.from_spec(tmp_path) == tok
    with pytest.raises(TokenizerFileError, match="no such tokenizer file"):
        Tokenizer.from_spec(tmp_path / "missing.json")
    with pytest.raises(TokenizerFileError, match="empty/tokenizer.json"):
        Tokenizer.from_spec((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with pytest.raises(TokenizerFileError, match="unknown pretrained"):
        Tokenizer.from_pretrained("gpt5_base")


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"format": "chinwag-bpe", "version": 1, "ranks": [', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"version": "1.0", "model": {}}', "Hugging Face"),
        ('{"format": "chinwag-bpe", "version": 2}', "version"),
        ('{"format": "chinwag-bpe", "version": 1, "pattern": "", "ranks": []}', "pattern"),
    ],
)
def test_corrupt_file_gives_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(TokenizerFileError, match=match) as e:
        Tokenizer.load(p)
    assert str(p) in str(e.value)


def test_semantically_broken_files(tok, tmp_path):
    d = tok.to_dict()
    cases = {
        "missing_byte": (dict(d, ranks=d["ranks"][1:]), "single-byte"),
        "bad_b64": (dict(d, ranks=[["!!!", 0]] + d["ranks"][1:]), "invalid base64"),
        "bad_item": (dict(d, ranks=[["QQ==", "x"]] + d["ranks"][1:]), r"ranks\[0\]"),
        "no_end": (
            dict(d, special_tokens={k: v for k, v in d["special_tokens"].items() if k != "<|end|>"}),
            "<|end|>",
        ),
        "collide": (dict(d, special_tokens=dict(d["special_tokens"], **{"<|bos|>": 5})), "collide"),
        "bad_regex": (dict(d, pattern="(unclosed"), "invalid tokenizer"),
    }
    for name, (obj, match) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(obj))
        with pytest.raises(TokenizerFileError, match=match):
            Tokenizer.load(p)
    truncated = tmp_path / "truncated.json"
    good = tok.save(tmp_path / "good.json").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(TokenizerFileError, match="corrupt"):
        Tokenizer.load(truncated)


def test_cl100k_and_o200k_reference_ids(cl100k):
    assert cl100k.encode("hello world") == [15339, 1917]
    assert cl100k.special_tokens["<|endoftext|>"] == 100257
    assert cl100k.bos_id == 100277 and cl100k.vocab_size == 100277 + 16
    assert cl100k.encode("<|endoftext|>") != [100257]
    o200k = Tokenizer.from_spec("o200k_base")
    assert o200k.encode("hello world") == [24912, 2375]
    assert o200k.special_tokens["<|endofprompt|>"] == 200018 and o200k.bos_id == 200019
    lens = o200k.token_byte_lengths()
    assert lens[199998] == 0  # an unused gap id


def test_merges_are_derived_from_ranks(tok):
    merges = tok.merges()
    assert len(merges) == len(tok.ranks) - 256
    by_rank = sorted((b for b in tok.ranks if len(b) > 1), key=tok.ranks.get)
    assert [a + b for a, b in merges] == by_rank
    for a, b in merges:  # each part existed before the token it makes
        assert tok.ranks[a] < tok.ranks[a + b] and tok.ranks[b] < tok.ranks[a + b]


def test_cl100k_merges_rebuild_an_equal_hf_tokenizer(cl100k):
    hf = cl100k.to_hf()
    for text in corpus_texts(40_000)[:200] + ["hello world", "  spaces\n\n\tand 12345678 ünï 日本 🎉"]:
        assert hf.encode(text, add_special_tokens=False).ids == cl100k.encode(text)
