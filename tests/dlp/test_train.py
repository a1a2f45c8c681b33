"""The DLP training loop: dataset tensors, BIO alignment, a decreasing loss, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from chinwag.dlp import synth
from chinwag.dlp.dsl import serialize
from chinwag.dlp.labels import BIO_TAGS
from chinwag.dlp.model import DOC_HEADS, FLAGS, DLPModel
from chinwag.dlp.policy import document_labels
from chinwag.dlp.tokenizer import DLPTokenizer, bio_to_spans, span_to_tokens
from chinwag.dlp.train import (
    DLPTrainConfig,
    build_dataset,
    dlp_loss,
    flag_targets,
    load_dlp,
    lr_at,
    train_dlp,
)

MAX_LEN = 256


@pytest.fixture(scope="module")
def corpus():
    train = synth.generate(300, seed=0, split="train")
    val = synth.generate(24, seed=1, split="val")
    tok = DLPTokenizer.train([serialize(e.doc).text for e in train], vocab_size=600, seed=0)
    return train, val, tok


def test_dataset_shapes_and_padding(corpus):
    train, _, tok = corpus
    ds = build_dataset(train[:20], tok, MAX_LEN)
    n, L = ds.ids.shape
    assert n == 20 and L <= MAX_LEN
    assert ds.mask.shape == ds.bio.shape == (n, L) and ds.mask.dtype == torch.bool
    assert ds.doc.shape == (n, len(DOC_HEADS)) and ds.flags.shape == (n, len(FLAGS))
    assert ((ds.bio == -100) == ~ds.mask).all()  # -100 exactly on padding
    assert int(ds.bio[ds.mask].max()) < len(BIO_TAGS) and int(ds.bio[ds.mask].min()) >= 0
    assert (ds.mask.sum(1) == torch.tensor([len(e) for e in ds.encs])).all()
    for i, ex in enumerate(train[:20]):  # targets come from the policy and the gold spans
        heads = document_labels(ex.doc, ex.spans, ex.obfuscated).heads()
        assert ds.doc[i].tolist() == [heads[h] for h in DOC_HEADS]
        assert ds.flags[i].tolist() == flag_targets(ex.spans)
    assert 0 < float(ds.flags.mean()) < 1


def test_bio_tags_align_with_gold_spans(corpus):
    train, _, tok = corpus
    ds = build_dataset(train[:60], tok, MAX_LEN)
    exact = total = 0
    for i in range(len(ds)):
        n = len(ds.encs[i])
        back = set(bio_to_spans(ds.sers[i], ds.encs[i], ds.bio[i, :n].tolist()))
        for s in ds.gold[i]:  # each kept gold span's first token carries a B- tag (unless it overlaps one)
            a, b = span_to_tokens(ds.sers[i], ds.encs[i], s)
            tags = {BIO_TAGS[t] for t in ds.bio[i, a:b].tolist()}
            assert BIO_TAGS[int(ds.bio[i, a])].startswith("B-") and "O" not in tags
        gold = set(ds.gold[i])
        exact += len(back & gold)
        total += len(gold)
        assert {s.label for s in back} <= {s.label for s in train[i].spans}
    assert total > 100 and exact / total >= 0.97  # the tokenizer's BIO round trip is ~99 % exact


def test_lr_schedule():
    cfg = DLPTrainConfig(lr=1e-3, warmup=10, steps=110, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)


def test_loss_decreases_and_save_load_round_trip(corpus, tmp_path):
    train, val, tok = corpus
    cfg = DLPTrainConfig(
        model="dlp-tiny", max_len=128, segment_len=64, batch_size=8, steps=40, warmup=5, lr=3e-3,
        eval_every=20, seed=0, out_dir=str(tmp_path),
    )  # fmt: skip
    res = train_dlp(cfg, train[:160], val, tok)
    hist = res["history"]
    assert [h["step"] for h in hist] == [20, 40]
    assert hist[-1]["loss"] < hist[0]["loss"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and "val_span_f1" in lines[-1] and "val_acc_sensitivity" in lines[-1]
    assert res["tokens_per_s"] > 0 and 0 <= res["final"]["span_f1"] <= 1
    # the loss on a fixed training batch is well below that of an untrained model
    ref = res["model"].eval()
    tr = build_dataset(train[:16], tok, 128)
    with torch.no_grad():
        fresh = DLPModel(res["config"]).eval()
        args = (tr.bio, tr.doc, tr.flags, cfg)
        before = dlp_loss(fresh(tr.ids, tr.mask, segment_len=64), *args)[0].item()
        after = dlp_loss(ref(tr.ids, tr.mask, segment_len=64), *args)[0].item()
    assert after < 0.7 * before
    model = load_dlp(tmp_path)
    ds = build_dataset(val[:4], tok, 128)
    with torch.no_grad():
        a = ref(ds.ids, ds.mask, segment_len=64)
        b = model(ds.ids, ds.mask, segment_len=64)
    assert torch.equal(a.bio_logits, b.bio_logits) and torch.equal(a.doc_logits, b.doc_logits)
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == 40
    assert not list(tmp_path.glob("*.tmp"))


def test_training_is_seeded(corpus):
    train, val, tok = corpus
    cfg = DLPTrainConfig(max_len=64, segment_len=32, batch_size=4, steps=3, eval_every=3, seed=3)
    a, b = train_dlp(cfg, train[:12], val[:4], tok), train_dlp(cfg, train[:12], val[:4], tok)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]


def test_bad_segment_len_is_rejected(corpus):
    train, val, tok = corpus
    with pytest.raises(ValueError, match="pool_every"):
        train_dlp(DLPTrainConfig(segment_len=12), train[:4], val[:2], tok)
