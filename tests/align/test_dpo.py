"""DPO family: each loss against its closed form on fixed log-probs, TRL's metric names and identities,
config validation, and a tiny end-to-end run that moves the preference the right way."""

import math

import pytest
import torch

from chinwag.align.dpo import DPOConfig, combined_loss, dpo_train, precompute_ref_logps, preference_loss

PC = torch.tensor([-5.0, -3.0, -8.0])
PR = torch.tensor([-6.0, -2.0, -9.5])
RC = torch.tensor([-5.5, -3.5, -7.0])
RR = torch.tensor([-5.0, -2.5, -9.0])
LC = torch.tensor([2.0, 4.0, 1.0])
LR = torch.tensor([3.0, 1.0, 5.0])


def _z():  # rho_c - rho_r per pair, by hand
    return [
        (pc - rc) - (pr - rr)
        for pc, pr, rc, rr in zip(PC.tolist(), PR.tolist(), RC.tolist(), RR.tolist(), strict=True)
    ]


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_matches_closed_form():
    beta = 0.1
    want = sum(-_logsig(beta * z) for z in _z()) / 3
    loss, _ = preference_loss(PC, PR, RC, RR, beta=beta)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_cdpo_label_smoothing():
    beta, eps = 0.5, 0.2
    want = sum(-(1 - eps) * _logsig(beta * z) - eps * _logsig(-beta * z) for z in _z()) / 3
    loss, _ = preference_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_robust_closed_form_and_unbiased_at_zero_smoothing():
    beta, eps = 0.3, 0.1
    want = sum((-(1 - eps) * _logsig(beta * z) + eps * _logsig(-beta * z)) / (1 - 2 * eps) for z in _z()) / 3
    loss, _ = preference_loss(PC, PR, RC, RR, beta=beta, loss_type="robust", label_smoothing=eps)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    r0, _ = preference_loss(PC, PR, RC, RR, beta=beta, loss_type="robust")
    s0, _ = preference_loss(PC, PR, RC, RR, beta=beta)
    assert r0.item() == pytest.approx(s0.item(), rel=1e-6)


def test_hinge_closed_form():
    beta = 2.0
    want = sum(max(0.0, 1 - beta * z) for z in _z()) / 3
    loss, _ = preference_loss(PC, PR, RC, RR, beta=beta, loss_type="hinge")
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_ipo_is_per_token_averaged_and_needs_lengths():
    beta = 0.1
    want = 0.0
    for pc, pr, rc, rr, lc, lr in zip(*(t.tolist() for t in (PC, PR, RC, RR, LC, LR)), strict=True):
        want += ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2
    loss, _ = preference_loss(
        PC, PR, RC, RR, beta=beta, loss_type="ipo", chosen_lengths=LC, rejected_lengths=LR
    )
    assert loss.item() == pytest.approx(want / 3, rel=1e-6)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(PC, PR, RC, RR, loss_type="ipo")


def test_sft_term_is_token_mean_nll_of_chosen():
    loss, _ = preference_loss(PC, PR, RC, RR, loss_type="sft", chosen_lengths=LC, rejected_lengths=LR)
    assert loss.item() == pytest.approx(-PC.sum().item() / LC.sum().item(), rel=1e-6)


def test_trl_metric_names_and_identities():
    beta = 0.1
    _, m = preference_loss(PC, PR, RC, RR, beta=beta)
    assert set(m) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    }
    rc = [beta * (a - b) for a, b in zip(PC.tolist(), RC.tolist(), strict=True)]
    rr = [beta * (a - b) for a, b in zip(PR.tolist(), RR.tolist(), strict=True)]
    assert m["rewards/chosen"] == pytest.approx(sum(rc) / 3)
    assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"])
    assert m["rewards/accuracies"] == pytest.approx(sum(c > r for c, r in zip(rc, rr, strict=True)) / 3)
    assert m["logps/chosen"] == pytest.approx(PC.mean().item())
    assert m["logps/rejected"] == pytest.approx(PR.mean().item())


def test_gradient_direction_raises_chosen_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = preference_loss(pc, pr, RC, RR)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises logπ(c), lowers logπ(r)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(PC, PR, RC, RR, loss_type="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(PC, PR, RC, RR, label_smoothing=0.5)
    with pytest.raises(ValueError, match="loss_weights"):
        DPOConfig(loss_types=["sigmoid", "sft"], loss_weights=[1.0]).validate()


def test_combined_loss_is_weighted_sum():
    cfg = DPOConfig(loss_types=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    total, m = combined_loss(PC, PR, RC, RR, cfg, LC, LR)
    s, _ = preference_loss(PC, PR, RC, RR)
    f, _ = preference_loss(PC, PR, RC, RR, loss_type="sft", chosen_lengths=LC)
    assert total.item() == pytest.approx(s.item() + 0.5 * f.item(), rel=1e-6)
    assert m["loss/sigmoid"] == pytest.approx(s.item()) and "loss/sft" in m


def _tiny():
    from chinwag.align.rm import PrefPair
    from chinwag.align.tasks import byte_tokenizer
    from chinwag.model import ChinwagLM, ModelConfig

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = ChinwagLM(
        ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    )
    pairs = [
        PrefPair(
            [tok.bos_id, *tok.encode(f"q{i}")],
            tok.encode("yes") + [tok.end_id],
            tok.encode("no") + [tok.end_id],
        )
        for i in range(8)
    ]
    return model, tok, pairs


def test_reference_logps_match_policy_at_start_and_training_moves_preference():
    model, tok, pairs = _tiny()
    ref = precompute_ref_logps(model, tok, pairs)
    assert ref.shape == (8, 2)
    cfg = DPOConfig(lr=1e-2, steps=15, batch_size=8, beta=0.5, log_every=5)
    hist = dpo_train(model, tok, pairs, cfg, ref_logps=ref)
    assert hist[0]["rewards/margins"] >= 0.0
    assert hist[-1]["rewards/margins"] > 0.5 and hist[-1]["rewards/accuracies"] == 1.0
    after = precompute_ref_logps(model, tok, pairs)
    assert ((after[:, 0] - after[:, 1]) > (ref[:, 0] - ref[:, 1])).all()


def test_precomputed_reference_equals_first_step_when_omitted():
    model, tok, pairs = _tiny()
    cfg = DPOConfig(lr=1e-2, steps=1, batch_size=8, log_every=1)
    hist = dpo_train(model, tok, pairs, cfg)  # ref = the policy itself before the first update
    assert hist[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert hist[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)


def test_cli_dpo_trains_and_writes_a_run(tmp_path):
    import json

    from typer.testing import CliRunner

    from chinwag.align.cli import app
    from chinwag.model import load_model, save_model

    model, tok, _ = _tiny()
    save_model(model, tmp_path / "sft")
    tok.save(tmp_path / "sft" / "tokenizer.json")
    data = tmp_path / "prefs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(8))
    )
    args = [
        "dpo",
        "--policy",
        str(tmp_path / "sft"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "dpo"),
        "--steps",
        "12",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--beta",
        "0.5",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "preference accuracy" in res.output
    load_model(tmp_path / "dpo")
    cfg = json.loads((tmp_path / "dpo" / "train_config.json").read_text())
    assert cfg["loss_types"] == ["sigmoid", "sft"] and cfg["pref_accuracy_after"] == 1.0
    assert len((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()) >= 1
    # bad input: one clear line naming file and line, no traceback
    data.write_text('{"prompt": "q", "chosen": "a"}\n')
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and f"{data}:1: missing field 'rejected'" in res.output.replace("\n", "")
    res = CliRunner().invoke(app, args[:-2] + ["--loss-type", "sigmoid,bogus"])
    assert res.exit_code != 0 and "bogus" in res.output
