"""REINFORCE / RLOO / GRPO: advantages and the clipped, KL-penalised loss by hand; a tiny smoke run."""

import copy
import math

import pytest
import torch

from chinwag.align import common, group, tasks


def test_rloo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])  # two groups of 3
    a = group.rloo_advantages(r, 3)
    expected = [1 - 0.0, 0 - 0.5, 0 - 0.5, 1 - 2.5, 2 - 2.0, 3 - 1.5]
    assert a.tolist() == pytest.approx(expected)
    # equivalently G/(G-1) * (r - group mean)
    assert a[:3].tolist() == pytest.approx([1.5 * (x - 1 / 3) for x in (1.0, 0.0, 0.0)])


def test_grpo_and_dr_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # groups of 4
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # Bessel: sqrt(1/3)
    a = group.grpo_advantages(r, 4, "group")
    assert a[:4].tolist() == pytest.approx(
        [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 + [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)], rel=1e-6
    )
    assert a[4:].tolist() == [0.0] * 4  # a zero-std group gives no signal (and no NaN)
    dr = group.grpo_advantages(r, 4, "none")
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    b = group.grpo_advantages(r, 4, "batch")
    assert b.tolist() == pytest.approx((dr / (r.std() + 1e-4)).tolist())


def test_reinforce_advantage_subtracts_the_baseline():
    assert group.reinforce_advantages(torch.tensor([1.0, 0.0]), 0.25).tolist() == [0.75, -0.25]


def test_group_loss_on_policy_is_reinforce_and_clips_off_policy():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    lp = torch.tensor([[-1.0, -2.0, 5.0], [-0.5, 9.0, 9.0]])
    adv = torch.tensor([2.0, -1.0])
    # on-policy (old = logp), no KL: per token -A; token mean = (-2 - 2 + 1) / 3
    loss, m = group.group_loss(lp, lp, lp, adv, mask, beta=0.0, loss_type="token")
    assert loss.item() == pytest.approx(-1.0)
    assert m["kl"] == 0 and m["clip_ratio"] == 0 and m["ratio"] == pytest.approx(1.0)
    # sequence mean: mean(-2, +1) = -0.5; dr_grpo: sum / (B * max_len) = -3 / (2 * 4)
    assert group.group_loss(lp, lp, lp, adv, mask, loss_type="sequence")[0].item() == pytest.approx(-0.5)
    dr = group.group_loss(lp, lp, lp, adv, mask, loss_type="dr_grpo", max_len=4)[0]
    assert dr.item() == pytest.approx(-3 / 8)
    # off-policy: ratio 1.5 on a positive advantage is clipped at 1.2
    old = lp - torch.tensor([[math.log(1.5), 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, m = group.group_loss(lp, old, lp, adv, mask, beta=0.0, epsilon=0.2)
    assert loss.item() == pytest.approx((-1.2 * 2 - 2 + 1) / 3)
    assert m["clip_ratio"] == pytest.approx(1 / 3)
    # asymmetric clip (DAPO): epsilon_high 0.6 leaves ratio 1.5 unclipped
    loss, _ = group.group_loss(lp, old, lp, adv, mask, epsilon=0.2, epsilon_high=0.6)
    assert loss.item() == pytest.approx((-1.5 * 2 - 2 + 1) / 3)


def test_group_loss_k3_kl_term():
    mask = torch.tensor([[True, True]])
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    loss, m = group.group_loss(lp, lp, ref, torch.tensor([0.0]), mask, beta=0.1)
    r = ref - lp
    k3 = torch.exp(r) - 1 - r
    assert loss.item() == pytest.approx(0.1 * k3.mean().item())
    assert m["kl"] == pytest.approx(k3.mean().item())


def test_group_loss_gradient_is_not_zero_when_the_loss_is():
    # GRPO "loss is 0" (trl#2703): on-policy with centred advantages the value is ~0, the gradient is not
    lp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    loss, _ = group.group_loss(
        lp, lp.detach(), lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 1).bool()
    )
    loss.backward()
    assert loss.item() == pytest.approx(0.0) and lp.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny():
    from chinwag.model import ChinwagLM

    tok = tasks.byte_tokenizer()
    torch.manual_seed(0)
    return ChinwagLM(tasks.tiny_config(tok.vocab_size, d_model=32, n_layers=1, n_heads=2)), tok


@pytest.mark.parametrize("algo", ["reinforce", "rloo", "grpo"])
def test_group_train_runs_and_updates(tiny, algo):
    m0, tok = tiny
    policy, ref = copy.deepcopy(m0), common.clone_frozen(m0)
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = group.GroupConfig(algo=algo, steps=2, prompts_per_step=2, group_size=3, max_new_tokens=4, lr=1e-3)
    out = group.group_train(policy, ref, tok, ["a", "b"], lambda p, c: float(len(c)), cfg)
    rec = out["history"][-1]
    for k in ("reward", "kl", "entropy", "clip_ratio", "loss", "rewards/<lambda>/mean"):
        assert k in rec and math.isfinite(rec[k])
    assert out["history"][0]["kl"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_mask_truncated_completions_gives_zero_loss_when_all_are_truncated(tiny, monkeypatch):
    m0, tok = tiny
    # every completion hits max_new_tokens (no stop token); the rewards differ, so advantages are non-zero
    fake = [[ord("a"), ord("a")], [ord("b"), ord("b")]]
    monkeypatch.setattr(
        common, "rollout", lambda model, tok, pids, params, n=1, seed=0: fake * (len(pids) * n // 2)
    )

    def reward(p, c):
        return float(c.startswith("a"))

    for mask_truncated in (True, False):
        policy, ref = copy.deepcopy(m0), common.clone_frozen(m0)
        before = [p.detach().clone() for p in policy.parameters()]
        cfg = group.GroupConfig(
            algo="grpo",
            steps=1,
            prompts_per_step=2,
            group_size=2,
            max_new_tokens=2,
            mask_truncated=mask_truncated,
            inner_epochs=1,
        )
        rec = group.group_train(policy, ref, tok, ["x", "y"], reward, cfg)["history"][0]
        assert rec["completions/clipped_ratio"] == 1.0
        changed = any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
        if mask_truncated:
            assert rec["loss"] == 0.0 and not changed
        else:
            assert changed


def test_config_validation():
    with pytest.raises(ValueError, match="algo"):
        group.GroupConfig(algo="ppo").validate()
    with pytest.raises(ValueError, match="group_size"):
        group.GroupConfig(algo="rloo", group_size=1).validate()
    group.GroupConfig(algo="reinforce", group_size=1).validate()
