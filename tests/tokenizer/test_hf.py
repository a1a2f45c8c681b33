"""HF tokenizer files: transformers loads them, encodes like us, and its chat template equals render()."""

from __future__ import annotations

import json

import pytest

from chinwag.tokenizer.chat import render
from chinwag.tokenizer.hf import GENERATION_EOS, save_hf_tokenizer_files

from .conftest import corpus_texts

CHATS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "system", "content": "Be kind.\n\n"},
        {"role": "user", "content": "  What's 12345 + 678?\n"},
        {"role": "assistant", "content": "It's 13023. 🎉"},
        {"role": "user", "content": "Ünïcödé, 日本語, and tabs\tplease"},
    ],
]


@pytest.fixture(scope="module")
def hf_dir(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    save_hf_tokenizer_files(tok, out, model_max_length=256)
    return out


def test_files_written(tok, hf_dir):
    names = {p.name for p in hf_dir.iterdir()}
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
    } <= names
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["add_bos_token"] is False
    assert cfg["eos_token"] == GENERATION_EOS == "<|end|>" and cfg["model_max_length"] == 256
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    assert tj["model"]["ignore_merges"] is True and tj["model"]["type"] == "BPE"
    assert {a["content"]: a["id"] for a in tj["added_tokens"]} == tok.special_tokens
    assert all(a["special"] for a in tj["added_tokens"])


def test_tokenizers_library_loads_tokenizer_json(tok, hf_dir):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    for text in corpus_texts(20_000)[:50]:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)
    assert hf.get_vocab_size() == tok.vocab_size


def test_transformers_fast_tokenizer_matches(tok, hf_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    assert hf.bos_token_id == tok.bos_id and hf.eos_token_id == tok.end_id and hf.pad_token_id == tok.pad_id
    samples = corpus_texts(20_000)[:30] + ["hello world", "  x\n\n\ty 1234567 ñ 日本 🎉", "don't STOP'LL"]
    for text in samples:
        assert hf(text)["input_ids"] == tok.encode(text)  # no BOS added: add_bos_token false
        assert hf.decode(tok.encode(text)) == text
    for msgs in CHATS:
        for gen in (True, False):
            out = hf.apply_chat_template(msgs, add_generation_prompt=gen)
            ids = out["input_ids"] if not isinstance(out, list) else out
            assert ids == render(msgs, tok, add_generation_prompt=gen).ids
            text = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
            assert text == tok.decode(render(msgs, tok, add_generation_prompt=gen).ids)
    with pytest.raises(Exception, match="unknown role"):
        hf.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)
