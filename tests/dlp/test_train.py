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


# --- auxiliary losses ---


def test_swap_lines_keeps_the_header_and_the_tokens():
    from chinwag.dlp.train import swap_lines

    nl = 9
    x = torch.tensor([1, 2, nl, 3, 3, nl, 4, nl, 5, 6, nl, 7])  # header line [1 2 \n], then 4 lines
    seen = set()
    for seed in range(30):
        y, label = swap_lines(x, nl, torch.Generator().manual_seed(seed))
        assert y[:3].tolist() == [1, 2, nl] and sorted(y.tolist()) == sorted(x.tolist())
        assert label == float(not torch.equal(x, y))
        seen.add(tuple(y.tolist()))
    assert len(seen) > 3  # different pairs get swapped
    same = torch.tensor([1, nl, 3, nl, 3, nl])  # two identical lines: swapping changes nothing, target 0
    y, label = swap_lines(same, nl, torch.Generator().manual_seed(0))
    assert torch.equal(y, same) and label == 0.0
    assert swap_lines(torch.tensor([1, nl, 2]), nl, torch.Generator())[1] == 0.0  # one line: nothing to swap


def test_aux_rows_are_masked_away_from_markers_and_clean_rows_untouched(corpus):
    from chinwag.dlp.train import _plan_row, structural_ids

    train, _, tok = corpus
    ds = build_dataset(train[:40], tok, MAX_LEN)
    cfg = DLPTrainConfig(aux_frac=0.5)
    struct = torch.tensor(structural_ids(tok))
    assert tok.piece_to_id("<|body|>") in struct.tolist() and tok.piece_to_id("\n") in struct.tolist()
    gen = torch.Generator().manual_seed(0)
    rows = [_plan_row(ds, i, cfg, gen, struct, tok.piece_to_id("\n")) for i in range(len(ds))]
    aux = [r for r in rows if r.aux]
    assert 8 < len(aux) < 32 and any(r.shuffled for r in aux) and not all(r.shuffled for r in aux)
    masked = eligible = 0
    for r in rows:
        n = int(ds.mask[r.index].sum())
        if not r.aux:
            assert r.masked is None and torch.equal(r.ids, ds.ids[r.index, :n])
            continue
        assert not torch.isin(r.ids[r.masked], struct).any()
        masked += int(r.masked.sum())
        eligible += int((~torch.isin(r.ids, struct)).sum())
    assert 0.12 < masked / eligible < 0.18


def test_step_gradient_does_not_depend_on_micro_batching(corpus):
    """Losses are sums divided by the step's totals, so one micro-batch of 6 and three of 2 give the same
    gradient (the point of normalising by step totals rather than per micro-batch means)."""
    from collections import Counter

    from chinwag.dlp.model import get_dlp_config
    from chinwag.dlp.train import _collate, _plan_row, loss_counts, loss_sums, loss_weights, structural_ids

    train, _, tok = corpus
    ds = build_dataset(train[:6], tok, 128)
    cfg = DLPTrainConfig(aux_frac=0.5, segment_len=64, bf16=False)
    gen = torch.Generator().manual_seed(1)
    struct = torch.tensor(structural_ids(tok))
    rows = [_plan_row(ds, i, cfg, gen, struct, tok.piece_to_id("\n")) for i in range(6)]
    assert any(r.aux for r in rows) and not all(r.aux for r in rows)
    torch.manual_seed(0)
    model = DLPModel(get_dlp_config("dlp-tiny", vocab_size=tok.vocab_size))
    w = loss_weights(cfg)

    def grads(groups):
        batches = [_collate(ds, g, 8) for g in groups]
        totals = Counter()
        for b in batches:
            totals.update(loss_counts(b))
        model.zero_grad()
        for b in batches:
            out = model(b["ids"], b["mask"], segment_len=64, mask_positions=b["masked"])
            sums = loss_sums(model, out, b, cfg)
            assert set(sums) == {"doc", "flag", "bio", "denoise", "shuffle"} or len(groups) > 1
            sum(w[k] * v / totals[k] for k, v in sums.items()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    one, three = grads([rows]), grads([rows[:2], rows[2:4], rows[4:]])
    assert len(one) == len(three)
    for a, b in zip(one, three, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_token_budget_curriculum_and_callback(corpus):
    train, val, tok = corpus
    infos = []
    cfg = DLPTrainConfig(
        max_len=128, phase1_max_len=64, phase1_frac=0.5, segment_len=64, tokens_per_step=600, batch_size=4,
        steps=6, warmup=2, eval_every=3, seed=0,
    )  # fmt: skip
    res = train_dlp(cfg, train[:80], val[:6], tok, callback=infos.append)
    assert [i["phase"] for i in infos] == [1, 1, 1, 2, 2, 2]
    assert [i["step"] for i in infos] == list(range(1, 7)) and all(i["steps"] == 6 for i in infos)
    assert [i["progress"] for i in infos] == [k / 6 for k in range(1, 7)]
    assert infos[0]["val_span_f1"] is None and infos[2]["val_span_f1"] is not None
    assert [h["phase"] for h in res["history"]] == [1, 2]
    assert res["history"][-1]["tokens"] >= 6 * 600  # each step gathers at least the token budget


def test_curriculum_without_easy_documents_is_an_error(corpus):
    train, val, tok = corpus
    hard = [e for e in train if e.obfuscated][:6]
    with pytest.raises(ValueError, match="easy documents"):
        train_dlp(DLPTrainConfig(max_len=64, segment_len=32, phase1_frac=0.5, steps=2), hard, val[:2], tok)


def test_time_budget_drives_the_schedule(corpus, tmp_path):
    train, val, tok = corpus
    infos = []
    cfg = DLPTrainConfig(max_len=64, segment_len=32, batch_size=2, steps=None, max_seconds=1.0, warmup=1,
                         phase1_frac=0.5, phase1_max_len=32, eval_every=1000, ckpt_every=0, lr=1e-3,
                         min_lr_frac=0.1, out_dir=str(tmp_path))  # fmt: skip
    res = train_dlp(cfg, train[:40], val[:2], tok, callback=infos.append)
    assert 1.0 <= res["train_seconds"] < 1.5 and res["steps"] == len(infos) > 4
    prog = [i["progress"] for i in infos]
    assert prog == sorted(prog) and prog[-1] == 1.0 and infos[-1]["steps"] is None
    phases = [i["phase"] for i in infos]
    assert phases == sorted(phases) and phases[0] == 1 and phases[-1] == 2  # switch at half the time
    lrs = [i["lr"] for i in infos]
    assert lrs[1] > lrs[-1] and lrs[-1] < 0.25e-3  # the cosine reached (nearly) its floor on time
    assert [h["step"] for h in res["history"]] == [res["steps"]]


# --- checkpoints and resume ---


def test_resume_after_a_kill_gives_the_same_weights(corpus, tmp_path):
    train, val, tok = corpus

    def cfg(out):
        return DLPTrainConfig(
            max_len=128, phase1_max_len=64, phase1_frac=0.34, segment_len=64, tokens_per_step=400,
            batch_size=4, steps=6, warmup=2, eval_every=2, ckpt_every=2, seed=5, out_dir=str(out),
        )  # fmt: skip

    whole = train_dlp(cfg(tmp_path / "a"), train[:60], val[:6], tok)
    # killed after step 5: the newest checkpoint is step 4, so step 5 is redone after the resume
    cut = train_dlp(cfg(tmp_path / "b"), train[:60], val[:6], tok, stop_after=5)
    assert cut["stopped"] and (tmp_path / "b/checkpoints/step_0000004/DONE").is_file()
    assert not (tmp_path / "b/model.safetensors").exists()
    again = train_dlp(cfg(tmp_path / "b"), train[:60], val[:6], tok, resume=True)
    a, b = whole["model"].state_dict(), again["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("step", "phase", "loss", "val_span_f1", "val_acc_sensitivity")
    assert [[h[k] for k in keys] for h in whole["history"]] == [
        [h[k] for k in keys] for h in again["history"]
    ]
    # both run folders: same weights on disk, the last two checkpoints kept, no temp files
    assert load_dlp(tmp_path / "a").state_dict().keys() == a.keys()
    assert sorted(p.name for p in (tmp_path / "b/checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".tmp-*"))
    for name in ("tokenizer.json", "train_config.json", "metrics.jsonl", "config.json"):
        assert (tmp_path / "b" / name).is_file()


def test_resume_skips_a_corrupt_newest_checkpoint(corpus, tmp_path):
    train, val, tok = corpus
    cfg = DLPTrainConfig(max_len=64, segment_len=32, batch_size=2, steps=4, warmup=1, eval_every=10,
                         ckpt_every=2, keep_checkpoints=3, out_dir=str(tmp_path))  # fmt: skip
    whole = train_dlp(cfg, train[:20], val[:2], tok)
    (tmp_path / "checkpoints/step_0000004/model.safetensors").write_bytes(b"torn")
    with pytest.warns(UserWarning, match="step_0000004"):
        again = train_dlp(cfg, train[:20], val[:2], tok, resume=True)  # redoes steps 3-4 from step 2
    a, b = whole["model"].state_dict(), again["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_read_examples_round_trips_synth_jsonl(tmp_path):
    from chinwag.dlp.train import read_examples

    exs = synth.generate(12, seed=4, split="val")
    path = tmp_path / "val.jsonl"
    synth.write_jsonl(exs, path)
    back = read_examples(path)
    assert [e.doc.to_dict() for e in back] == [e.doc.to_dict() for e in exs]
    for a, b in zip(exs, back, strict=True):
        assert a.spans == b.spans and a.obfuscated == b.obfuscated and a.forms == b.forms
        assert a.hard_negatives == b.hard_negatives and a.template == b.template
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["spans"][0]["end"] = 10**6
    path.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"val.jsonl:2: spans.0: end 1000000 is past the end"):
        read_examples(path)
