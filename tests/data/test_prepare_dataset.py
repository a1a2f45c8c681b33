from __future__ import annotations

import json

import numpy as np
import pytest

from chinwag.data import DataError, load_split, prepare, read_records
from chinwag.data.prepare import encode_example
from tests.data.helpers import chat, write_jsonl


def corpus(tmp_path, n=60, extra=()):
    return write_jsonl(tmp_path / "in.jsonl", [chat(i, turns=4) for i in range(n)] + list(extra))


def check_report_adds_up(rep):
    assert rep["read_total"] == rep["filtered_total"] + rep["deduplicated_total"] + rep["kept"]
    assert rep["kept"] == sum(s["conversations"] for s in rep["splits"].values())


def test_prepare_jsonl_only(tmp_path):
    dup = chat(3, turns=4) | {"id": "dup"}
    spam = {
        "id": "spam",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "!!!!!!!!"}],
    }
    lonely = {"id": "lonely", "messages": [{"role": "user", "content": "anyone there?"}]}
    src = corpus(tmp_path, extra=[dup, spam, lonely])
    out = tmp_path / "out"
    rep = prepare(src, out, val_fraction=0.2, seed=0, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "train.jsonl", "val.jsonl"]
    assert rep["read_total"] == 63 and rep["kept"] == 60
    assert rep["filtered"] == {"no_assistant_turn": 1, "repeated_chars": 1}
    assert rep["deduplicated"] == {"exact_duplicates": 1, "near_duplicates": 0}
    check_report_adds_up(rep)
    assert json.loads((out / "report.json").read_text()) == rep
    val_ids = {json.loads(line)["id"] for line in (out / "val.jsonl").read_text().splitlines()}
    assert 3 <= len(val_ids) <= 25
    # same seed, reversed input order: the same split
    src2 = write_jsonl(tmp_path / "rev.jsonl", [chat(i, turns=4) for i in reversed(range(60))])
    prepare(src2, tmp_path / "out2", val_fraction=0.2, seed=0, progress=False)
    val2 = {json.loads(line)["id"] for line in (tmp_path / "out2" / "val.jsonl").read_text().splitlines()}
    assert val2 == val_ids


def test_prepare_fail_leaves_previous_output(tmp_path):
    out = tmp_path / "out"
    prepare(corpus(tmp_path), out, progress=False)
    before = (out / "train.jsonl").read_text()
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat(1), "{oops"])
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        prepare(bad, out, progress=False)
    assert (out / "train.jsonl").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    rep = prepare(bad, out, on_error="skip", progress=False)
    assert rep["skipped_malformed"] == {"bad_json": 1} and rep["kept"] == 1


@pytest.mark.parametrize("tok_name, dtype", [("byte_tok", "uint16"), ("cl100k", "uint32")])
def test_sft_round_trip(tmp_path, request, tok_name, dtype):
    tok = request.getfixturevalue(tok_name)
    src = corpus(tmp_path, n=30)
    out = tmp_path / "sft"
    rep = prepare(src, out, tokenizer=tok, mode="sft", val_fraction=0.2, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == dtype and meta["mode"] == "sft" and meta["vocab_size"] == tok.vocab_size
    assert meta["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").is_file()
    assert (out / "train.tokens.bin").stat().st_size == meta["splits"]["train"]["tokens"] * np.dtype(
        dtype
    ).itemsize
    for split in ("train", "val"):
        records = list(read_records(out / f"{split}.jsonl"))
        ds = load_split(out, split, seq_len=4096)
        assert ds.mode == "sft" and ds.n_examples == len(records) == meta["splits"][split]["examples"]
        assert ds.n_tokens == meta["splits"][split]["tokens"] == rep["splits"][split]["tokens"]
        for i, conv in enumerate(records):
            ids, mask = encode_example(conv, tok, "sft")
            got_ids, got_mask = ds.example(i)
            assert got_ids.tolist() == ids and got_mask.tolist() == mask
            assert ids[0] == tok.bos_id and ids[-1] == tok.end_id


def test_sft_rows_padding_and_truncation(tmp_path, byte_tok):
    tok = byte_tok
    long_sys = "You are a helpful assistant. " * 10  # ~290 byte tokens before any supervised token

    def msgs(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    convs = [
        {"id": "short", "messages": msgs(("user", "hi"), ("assistant", "hello!"))},
        {"id": "lost", "messages": msgs(("system", long_sys), ("user", "q"), ("assistant", "the answer"))},
        {"id": "long", "messages": msgs(("user", "q?"), ("assistant", "word " * 100))},
    ]
    out = tmp_path / "sft"
    prepare(write_jsonl(tmp_path / "c.jsonl", convs), out, tokenizer=tok, val_fraction=0.0, progress=False)
    ds = load_split(out, "train", seq_len=128)
    assert ds.n_examples == 3 and ds.n_dropped == 1 and len(ds) == 2  # "lost" has no loss in 129 tokens
    batch = ds.get_rows(range(len(ds)))
    x, y, attn = batch["input_ids"], batch["targets"], batch["attention_mask"]
    assert x.shape == y.shape == attn.shape == (2, 128) and x.dtype.is_floating_point is False
    assert str(attn.dtype) == "torch.bool"
    assert ((y != -100).sum(1) > 0).all()  # never an all-ignored row
    # row 0 ("short"): right-padded; targets are the shifted ids where the mask says so
    ids, mask = encode_example(next(read_records(out / "train.jsonl")), tok, "sft")
    n = len(ids) - 1
    assert x[0, :n].tolist() == ids[:-1] and attn[0, :n].all() and not attn[0, n:].any()
    assert (x[0, n:] == tok.pad_id).all() and (y[0, n:] == -100).all()
    assert y[0, :n].tolist() == [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=False)]
    # row 1 ("long"): truncated from the right, so it keeps the start (bos, user turn)
    assert x[1, 0].item() == tok.bos_id and attn[1].all()
    assert ds[1]["input_ids"].tolist() == x[1].tolist()


def test_sft_drops_on_long_chitchat(tmp_path, cl100k, chitchat_records):
    # long real conversations at seq_len 128: rows are truncated, none is ever all-padding or loss-free;
    # the ones given a ~180-token system prompt have no assistant token in their window and are dropped
    longest = sorted(chitchat_records, key=lambda c: -sum(len(m["content"]) for m in c.messages))[:40]
    system = {"role": "system", "content": "You are a helpful assistant. " * 30}
    recs = [
        c.to_json() | ({"messages": [system, *c.messages]} if i % 4 == 0 else {})
        for i, c in enumerate(longest)
    ]
    out = tmp_path / "sft"
    rep = prepare(
        write_jsonl(tmp_path / "c.jsonl", recs), out, tokenizer=cl100k, val_fraction=0.0, progress=False
    )
    ds = load_split(out, "train", seq_len=128)
    kept = list(read_records(out / "train.jsonl"))
    assert ds.n_examples == rep["kept"] == len(kept) > 30
    assert ds.n_dropped == sum(c.messages[0]["role"] == "system" for c in kept) > 5
    assert len(ds) + ds.n_dropped == ds.n_examples
    b = ds.get_rows(range(len(ds)))
    assert b["attention_mask"].all()  # every long conversation fills its window
    assert ((b["targets"] != -100).sum(1) > 0).all()
    assert load_split(out, "train", seq_len=1024).n_dropped == 0  # a longer window reaches the answers


def test_pretrain_packing(tmp_path, byte_tok):
    tok = byte_tok
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, body in enumerate(["first document here", "second one", "the third and last document"]):
        (docs / f"{i}.txt").write_text(body, encoding="utf-8")
    out = tmp_path / "pt"
    rep = prepare(docs, out, tokenizer=tok, mode="pretrain", val_fraction=0.0, progress=False)
    assert rep["kept"] == 3
    stream = []
    for conv in read_records(out / "train.jsonl"):
        stream += tok.encode(conv.text()) + [tok.eos_id]
    T = 8
    ds = load_split(out, "train", seq_len=T)
    assert ds.mode == "pretrain" and ds.n_tokens == len(stream) and len(ds) == (len(stream) - 1) // T
    b = ds.get_rows(range(len(ds)))
    for r in range(len(ds)):  # consecutive non-overlapping windows of T+1, shifted by one
        assert b["input_ids"][r].tolist() == stream[r * T : r * T + T]
        assert b["targets"][r].tolist() == stream[r * T + 1 : r * T + T + 1]
    assert b["attention_mask"].all() and (b["targets"] != -100).all()
    assert (np.fromfile(out / "train.mask.bin", dtype=np.uint8) == 1).all()
    with pytest.raises(IndexError):
        ds.get_rows([len(ds)])


def test_pretrain_from_conversations_and_val_source(tmp_path, byte_tok):
    train_src = corpus(tmp_path, n=10)
    val_src = write_jsonl(tmp_path / "val.jsonl", [chat(100), chat(3, turns=4) | {"id": "leak"}])
    out = tmp_path / "pt"
    rep = prepare(train_src, out, tokenizer=byte_tok, mode="pretrain", val_source=val_src, progress=False)
    assert rep["splits"]["train"]["conversations"] == 10
    assert rep["splits"]["val"]["conversations"] == 1  # the copy of a train conversation is deduplicated
    assert rep["deduplicated"]["exact_duplicates"] == 1
    check_report_adds_up(rep)
    conv = next(read_records(out / "val.jsonl"))
    ds = load_split(out, "val", seq_len=16)
    ids, _ = ds.example(0)
    assert ids.tolist() == byte_tok.encode("\n".join(m["content"] for m in conv.messages)) + [byte_tok.eos_id]


def test_rerun_without_tokenizer_removes_stale_token_files(tmp_path, byte_tok):
    src, out = corpus(tmp_path, n=5), tmp_path / "o"
    prepare(src, out, tokenizer=byte_tok, progress=False)
    assert (out / "meta.json").is_file()
    prepare(src, out, progress=False)
    assert not (out / "meta.json").exists() and not (out / "train.tokens.bin").exists()


def test_empty_split_loads(tmp_path, byte_tok):
    out = tmp_path / "o"
    prepare(corpus(tmp_path, n=5), out, tokenizer=byte_tok, val_fraction=0.0, progress=False)
    ds = load_split(out, "val", seq_len=32)
    assert len(ds) == 0 and ds.n_tokens == 0
