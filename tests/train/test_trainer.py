"""The loop end to end on a tiny model: exact resume, corrupt checkpoints, SFT, early stopping,
checkpoint rotation + best, --init-from, time budget, and 2-process DDP."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch

from chinwag.train import checkpoint as ckpt
from chinwag.train.trainer import Trainer, train
from chinwag.utils import read_json
from tests.train.helpers import make_cfg, metrics, weights


def _train_lines(run):
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in metrics(run)[0]]


def test_exact_resume_matches_uninterrupted_run(tmp_path, pretrain_data):
    # dropout on, so resume must also restore the torch RNG state to match
    kw = dict(max_steps=8, save_every=4, eval_every=3, model_overrides={"n_layers": 2, "dropout": 0.1})
    full = train(make_cfg(tmp_path / "full", pretrain_data, **kw))
    first = train(make_cfg(tmp_path / "split", pretrain_data, stop_at_step=4, **kw))
    assert first["stopped_reason"] == "stop_at_step" and first["final_step"] == 4
    second = train(make_cfg(tmp_path / "split", pretrain_data, resume=True, **kw))
    assert full["final_step"] == second["final_step"] == 8

    a, b = _train_lines(tmp_path / "full"), _train_lines(tmp_path / "split")
    assert [x[0] for x in b] == list(range(1, 9))  # one line per step, none duplicated by the resume
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, abs=1e-6)
    assert [e["val_loss"] for e in metrics(tmp_path / "full")[1]] == pytest.approx(
        [e["val_loss"] for e in metrics(tmp_path / "split")[1]], abs=1e-6
    )
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_corrupt_checkpoints_fall_back_then_fail_clearly(tmp_path, pretrain_data):
    run = tmp_path / "run"
    train(make_cfg(run, pretrain_data, max_steps=6, save_every=2, keep_last=3))
    steps = ckpt.list_checkpoints(run)
    assert [p.name for p in steps] == ["step_0000002", "step_0000004", "step_0000006"]
    assert all(ckpt.checkpoint_problem(p) is None for p in steps)

    # a torn last metrics line (crash mid-append) must not break resume
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    # truncate the newest weights: resume warns, names it, and continues from step 4
    w = steps[2] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert "truncated" in ckpt.checkpoint_problem(steps[2])
    # a missing marker (a partial write) also disqualifies a checkpoint
    (steps[1] / ckpt.MARKER).unlink()
    assert "marker" in ckpt.checkpoint_problem(steps[1])
    with pytest.warns(UserWarning) as record:
        t = Trainer(make_cfg(run, pretrain_data, max_steps=8, save_every=2, keep_last=3, resume=True))
    msgs = " ".join(str(r.message) for r in record)
    assert "step_0000006" in msgs and "step_0000004" in msgs
    assert t.state["step"] == 2
    summary = t.fit()
    assert summary["final_step"] == 8
    assert [r["step"] for r in metrics(run)[0]] == list(range(1, 9))  # lines past step 2 were replaced
    assert ckpt.checkpoint_problem(run / "checkpoints" / "step_0000006") is None  # rewritten whole

    # a flipped byte (same size) is caught by the sha256
    for p in ckpt.list_checkpoints(run):
        opt = p / "optimizer.safetensors"
        data = bytearray(opt.read_bytes())
        data[-1] ^= 0xFF
        opt.write_bytes(bytes(data))
        assert "sha256" in ckpt.checkpoint_problem(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match="none of the 3 checkpoints is valid"):
            Trainer(make_cfg(run, pretrain_data, max_steps=10, resume=True))


def test_resume_without_checkpoints_and_overwrite_guard(tmp_path, pretrain_data):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        Trainer(make_cfg(tmp_path / "empty", pretrain_data, resume=True))
    train(make_cfg(tmp_path / "run", pretrain_data, max_steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(make_cfg(tmp_path / "run", pretrain_data, max_steps=1))


def test_sft_drops_windows_without_supervision_and_never_nans(tmp_path, sft_data):
    meta = read_json(Path(sft_data) / "meta.json")
    # tensorboard=True must not fail when tensorboard is not installed (it is optional)
    cfg = make_cfg(
        tmp_path / "sft", sft_data, mode="sft", seq_len=128, max_steps=4, eval_every=2, tensorboard=True
    )
    summary = train(cfg)
    # every 4th conversation opens with a user turn far longer than 128 tokens: no reply in the window
    assert summary["train_dropped"] > 0
    assert summary["train_rows"] + summary["train_dropped"] == meta["splits"]["train"]["examples"]
    tr, ev = metrics(tmp_path / "sft")
    assert tr and ev
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in tr)
    assert all(torch.isfinite(torch.tensor(e["val_loss"])) for e in ev)
    assert summary["best_val_loss"] is not None


def test_sft_rejects_pretrain_data(tmp_path, pretrain_data):
    with pytest.raises(ValueError, match="mode"):
        Trainer(make_cfg(tmp_path / "x", pretrain_data, mode="sft"))


def test_early_stopping(tmp_path, pretrain_data, monkeypatch):
    scripted = iter([3.0, 2.5, 2.6, 2.55, 2.4])  # best at the 2nd eval, then two without improvement

    def fake_eval(self):
        v = next(scripted)
        return {"val_loss": v, "val_ppl": 1.0, "val_bpb": 1.0, "val_acc": 0.0}

    monkeypatch.setattr(Trainer, "evaluate", fake_eval)
    s = train(
        make_cfg(tmp_path / "run", pretrain_data, max_steps=20, eval_every=2, early_stopping_patience=2)
    )
    assert s["stopped_reason"] == "early_stopping"
    assert s["final_step"] == 8 and s["best_step"] == 4 and s["best_val_loss"] == 2.5
    assert read_json(tmp_path / "run/checkpoints/best/trainer_state.json")["step"] == 4


def test_keep_last_k_and_best(tmp_path, pretrain_data):
    run = tmp_path / "run"
    s = train(make_cfg(run, pretrain_data, max_steps=10, save_every=2, keep_last=2, eval_every=2))
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_0000008", "step_0000010"]
    best = run / "checkpoints" / "best"
    assert ckpt.checkpoint_problem(best) is None
    evals = metrics(run)[1]
    best_eval = min(evals, key=lambda e: e["val_loss"])
    state = read_json(best / "trainer_state.json")
    assert state["step"] == best_eval["step"] == s["best_step"]
    assert state["best_val_loss"] == pytest.approx(best_eval["val_loss"])
    # the run root holds the latest weights + config + tokenizer, loadable as a model folder
    from chinwag.model.io import load_model

    assert weights(run).keys() == weights(run / "checkpoints" / "step_0000010").keys()
    for k, v in weights(run).items():
        assert torch.equal(v, weights(run / "checkpoints" / "step_0000010")[k])
    assert (run / "tokenizer.json").is_file() and (run / "train_config.json").is_file()
    assert load_model(run).num_params() == s["n_params"]


def test_init_from_a_pretrained_run(tmp_path, pretrain_data, sft_data):
    from chinwag.model.io import load_model

    train(make_cfg(tmp_path / "pre", pretrain_data, max_steps=3))
    pre = load_model(tmp_path / "pre")
    t = Trainer(
        make_cfg(tmp_path / "sft", sft_data, mode="sft", seq_len=128, init_from=str(tmp_path / "pre"))
    )
    for k, v in pre.state_dict().items():
        assert torch.equal(v, t.model.state_dict()[k]), k
    s = t.fit()
    assert s["final_step"] == 6
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["n_layers"] == 2


def test_max_minutes_stops_cleanly_and_saves(tmp_path, pretrain_data):
    s = train(
        make_cfg(tmp_path / "run", pretrain_data, max_steps=100_000, max_minutes=0.002, save_every=1000)
    )
    assert s["stopped_reason"] == "max_minutes"
    assert 0 < s["final_step"] < 100_000
    last = ckpt.list_checkpoints(tmp_path / "run")[-1]
    assert last.name == ckpt.step_name(s["final_step"]) and ckpt.checkpoint_problem(last) is None
    # a budget alone: the LR horizon is estimated from the pace and saved for resume
    s = train(make_cfg(tmp_path / "budget", pretrain_data, max_steps=None, max_minutes=0.01, save_every=1000))
    state = read_json(ckpt.list_checkpoints(tmp_path / "budget")[-1] / "trainer_state.json")
    assert s["stopped_reason"] == "max_minutes" and state["stopped_reason"] == "max_minutes"
    if s["final_step"] >= 5:
        assert state["total_steps"] is not None


def _ddp_worker(rank, world, port, cfg_dict, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from chinwag.train.config import TrainConfig

    t = Trainer(TrainConfig.from_dict(cfg_dict))
    t.fit()
    save_file(
        {k: v.contiguous() for k, v in t.model.state_dict().items() if k != "lm_head.weight"},
        f"{out}/rank{rank}.st",
    )


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu_agree(tmp_path, pretrain_data):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # world 2 x batch 2 sees the same rows per step as world 1 x batch 4
    cfg = make_cfg(tmp_path / "ddp", pretrain_data, batch_size=2, max_steps=4)
    mp.spawn(_ddp_worker, args=(2, port, cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = weights(tmp_path / "rank0.st"), weights(tmp_path / "rank1.st")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    single = train(make_cfg(tmp_path / "single", pretrain_data, batch_size=4, max_steps=4))
    assert single["final_step"] == 4
    ws = weights(tmp_path / "single")
    for k in ws:
        torch.testing.assert_close(ws[k], w0[k], rtol=1e-4, atol=1e-5)
    la = [r["loss"] for r in metrics(tmp_path / "ddp")[0]]
    lb = [r["loss"] for r in metrics(tmp_path / "single")[0]]
    assert la == pytest.approx(lb, rel=1e-5)
