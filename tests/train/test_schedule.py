"""Pure pieces of the loop: LR schedule, row order, eval metrics, config checks, optimizer groups,
and gradient-accumulation equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chinwag.train.config import TrainConfig
from chinwag.train.trainer import RowOrder, Trainer, eval_metrics, evaluate_sums, lr_at, train
from tests.train.helpers import make_cfg, metrics, weights


def test_lr_warmup_then_cosine_to_min():
    peak, warm, total, ratio = 1.0, 4, 14, 0.1
    lrs = [lr_at(s, peak, warm, total, ratio) for s in range(total + 3)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup reaching the peak
    assert lrs[4] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: the mean of peak and floor
    assert lrs[total] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1)  # floor, then stays there
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))  # never increases after warmup
    assert lr_at(50, 2.0, 4, None, 0.1) == 2.0  # no horizon yet: constant peak


def test_logged_lr_follows_the_schedule(tmp_path, pretrain_data):
    cfg = make_cfg(tmp_path / "run", pretrain_data, max_steps=6, warmup_steps=2, lr=1e-3, min_lr_ratio=0.2)
    train(cfg)
    tr, _ = metrics(tmp_path / "run")
    assert [r["step"] for r in tr] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in tr] == pytest.approx([lr_at(s, 1e-3, 2, 6, 0.2) for s in range(6)])


def test_row_order_is_a_seeded_permutation_per_epoch():
    order = RowOrder(10, seed=3)
    first = order.rows(0, 10)
    assert sorted(first) == list(range(10))  # an epoch visits every row once
    second = order.rows(10, 10)
    assert sorted(second) == list(range(10)) and list(second) != list(first)
    # any window is recomputable from (seed, position) alone: what resume relies on
    assert list(RowOrder(10, seed=3).rows(7, 6)) == list(np.concatenate([first, second])[7:13])
    assert list(RowOrder(10, seed=4).rows(0, 10)) != list(first)


def test_eval_metrics_hand_checked():
    # 4 target tokens, 8 bytes, 8 ln 2 nats in total: 2 ln 2 nats/token (ppl 4), 1 bit per byte
    m = eval_metrics(nats=8 * math.log(2), n_tokens=4, n_bytes=8, n_correct=1)
    assert m["val_loss"] == pytest.approx(2 * math.log(2))
    assert m["val_ppl"] == pytest.approx(4.0)
    assert m["val_bpb"] == pytest.approx(1.0)
    assert m["val_acc"] == pytest.approx(0.25)


class _Uniform(torch.nn.Module):
    """Logits all equal except a small bump on id 1: loss ln(V) + tiny, argmax always 1."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., 1] = 1e-6
        return logits, None


class _FixedRows:
    def get_rows(self, idx):
        n = len(idx)
        tgt = torch.tensor([[1, 2, -100, 3]] * n)
        return {
            "input_ids": torch.zeros(n, 4, dtype=torch.long),
            "targets": tgt,
            "attention_mask": tgt != -100,
        }


def test_evaluate_sums_bits_per_byte_by_hand():
    V = 8
    byte_lengths = torch.tensor([0, 1, 2, 3, 0, 0, 0, 0])  # id 1: 1 byte, id 2: 2 bytes, id 3: 3 bytes
    sums = evaluate_sums(_Uniform(V), _FixedRows(), np.arange(2), 1, byte_lengths, "cpu", torch.no_grad())
    nats, n_tok, n_bytes, correct = sums.tolist()
    assert n_tok == 6 and n_bytes == 2 * (1 + 2 + 3) and correct == 2  # -100 ignored; id 1 right twice
    assert nats == pytest.approx(6 * math.log(V), rel=1e-5)
    m = eval_metrics(*sums.tolist())
    assert m["val_bpb"] == pytest.approx(6 * math.log(V) / (math.log(2) * 12), rel=1e-5)  # = 1.5 bits/byte


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(mode="rl"), "mode"),
        (dict(dtype="fp8"), "dtype"),
        (dict(max_steps=None), "max_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(betas=(0.9, 1.5)), "betas"),
        (dict(keep_last=0), "keep_last"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    cfg = TrainConfig(data="x", max_steps=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=field):
        cfg.validate()


def test_config_roundtrip_and_defaults(tmp_path):
    cfg = TrainConfig(mode="sft", data="d", max_steps=3, betas=(0.8, 0.9), model_overrides={"dropout": 0.1})
    assert cfg.lr == 1e-4  # SFT default
    assert TrainConfig(data="d").lr == 6e-4
    cfg.save(tmp_path / "train_config.json")
    assert TrainConfig.load(tmp_path / "train_config.json") == cfg
    assert cfg.grad_accum(seq_len=32) == 1
    cfg.tokens_per_step, cfg.batch_size = 1000, 4
    assert cfg.grad_accum(seq_len=32) == 8  # ceil(1000 / 128)
    assert cfg.grad_accum(seq_len=32, world_size=2) == 4


def test_weight_decay_on_matrices_only(tmp_path, pretrain_data):
    t = Trainer(make_cfg(tmp_path / "run", pretrain_data, weight_decay=0.05))
    groups = t.optimizer.param_groups
    decay = [g for g in groups if g["weight_decay"] == 0.05]
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert decay and no_decay
    assert all(p.dim() >= 2 for g in decay for p in g["params"])
    assert all(p.dim() < 2 for g in no_decay for p in g["params"])
    n_opt = sum(p.numel() for g in groups for p in g["params"])
    assert n_opt == t.model.num_params()  # every parameter is optimised exactly once
    assert groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("mode", ["pretrain", "sft"])
def test_grad_accumulation_matches_one_big_batch(tmp_path, pretrain_data, sft_data, mode):
    data, seq = (pretrain_data, 32) if mode == "pretrain" else (sft_data, 64)
    common = dict(mode=mode, seq_len=seq, max_steps=3, eval_batches=0, save_every=100)
    a = make_cfg(tmp_path / "a", data, batch_size=4, **common)
    b = make_cfg(tmp_path / "b", data, batch_size=2, tokens_per_step=2 * 2 * seq, **common)
    ta = Trainer(a)
    ta.fit()
    tb = Trainer(b)
    assert tb.accum == 2 and ta.accum == 1
    tb.fit()
    la = [r["loss"] for r in metrics(a.out)[0]]
    lb = [r["loss"] for r in metrics(b.out)[0]]
    assert la == pytest.approx(lb, rel=1e-5)
    wa, wb = weights(a.out), weights(b.out)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_right_padding_needs_no_attention_mask():
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config
    from chinwag.train.trainer import causal_only

    lengths = torch.tensor([8, 5, 1])
    mask = torch.arange(8)[None, :] < lengths[:, None]
    assert causal_only(mask) is None and causal_only(torch.ones(2, 4, dtype=torch.bool)) is None
    left = mask.flip(1)
    assert causal_only(left) is left  # left padding does need the mask
    # and plain causal attention really gives the same logits at every real position
    model = ChinwagLM(get_config("tiny", vocab_size=64, n_layers=1)).eval()
    ids = torch.randint(0, 64, (3, 8))
    with torch.no_grad():
        masked, _ = model(ids, attention_mask=mask)
        plain, _ = model(ids)
    torch.testing.assert_close(masked[mask], plain[mask], rtol=1e-5, atol=1e-5)
