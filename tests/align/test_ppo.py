"""PPO numerics by hand: score placement on EOS, GAE, clipped losses, adaptive KL; plus a tiny smoke run."""

import math

import pytest
import torch

from chinwag.align import common, ppo, tasks


def test_score_lands_on_the_eos_position_not_padding():
    tok = tasks.byte_tokenizer()
    # two prompts of different lengths, completions of different lengths; row 1 gets padded
    ids, attn, cm = common.build_pairs(tok, [[1, 2, 3], [1, 2]], [[7, 8, tok.end_id], [9, tok.end_id]])
    mask = cm[:, 1:]
    zeros = torch.zeros(mask.shape)
    r, kl = ppo.token_rewards(torch.tensor([1.0, 2.0]), zeros, zeros, mask, kl_coef=0.1)
    # column t of the logprob grid scores token t+1: row 0's <|end|> is token 5 -> column 4
    assert ids[0, 5] == tok.end_id and r[0].tolist() == [0, 0, 0, 0, 1.0]
    assert ids[1, 3] == tok.end_id and r[1].tolist() == [0, 0, 2.0, 0, 0]
    assert not attn[1, 4]  # ... and position 4 of row 1 is padding, which gets nothing
    assert kl.abs().sum() == 0


def test_token_rewards_kl_penalty_only_on_completion_tokens():
    mask = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    logp = torch.tensor([[-9.0, -1.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.0, -1.5, -1.0, -1.0]])
    r, kl = ppo.token_rewards(torch.tensor([3.0]), logp, ref, mask, kl_coef=0.5, estimator="k1")
    assert kl.tolist() == [[0.0, 0.5, -1.0, 0.0]]
    assert r.tolist() == [[0.0, -0.25, 0.5 + 3.0, 0.0]]
    _, kl3 = ppo.token_rewards(torch.tensor([3.0]), logp, ref, mask, kl_coef=0.5, estimator="k3")
    x = torch.tensor([0.5, -1.0])
    assert kl3[0, 1:3].tolist() == pytest.approx((torch.exp(-x) - 1 + x).tolist())
    assert kl3[0, 0] == 0 and kl3[0, 3] == 0


def test_gae_matches_a_hand_computed_example():
    # one row, prompt column 0, completion columns 1..3, padding column 4
    mask = torch.tensor([[0, 1, 1, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([[5.0, 0.1, -0.2, 1.0, 7.0]])  # junk off the mask must be ignored
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3, 9.0]])
    g, lam = 0.9, 0.8
    # by hand, backwards: V after the last token is 0
    d3 = 1.0 + g * 0.0 - 0.3
    d2 = -0.2 + g * 0.3 - 0.4
    d1 = 0.1 + g * 0.4 - 0.5
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1 + g * lam * a2
    adv, ret = ppo.gae(rewards, values, mask, gamma=g, lam=lam)
    assert adv[0].tolist() == pytest.approx([0.0, a1, a2, a3, 0.0])
    assert ret[0].tolist() == pytest.approx([0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0.0])
    # gamma = lam = 1 with zero values: the advantage is the reward-to-go
    adv, _ = ppo.gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([0.0, 0.9, 0.8, 1.0, 0.0])


def test_clipped_policy_and_value_losses_by_hand():
    mask = torch.tensor([[True, True, False]])
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 3.0]])  # ratios 1.5, 0.5, (padding)
    adv = torch.tensor([[1.0, 1.0, 100.0]])
    values = torch.tensor([[1.0, 0.0, 50.0]])
    old_v = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    pg, vf, st = ppo.ppo_losses(logp, old, adv, values, old_v, returns, mask, 0.2, 0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5 (unclipped)
    assert pg.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert st["policy/clipfrac"] == pytest.approx(0.5)
    # value token 0: v=1 clipped to 0.2: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: v=0: max(1, 1) = 1
    assert vf.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert st["val/clipfrac"] == pytest.approx(0.5)
    assert st["policy/approxkl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_adaptive_kl_controller_update_formula():
    c = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(9.0, 256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    v = c.value
    assert c.update(5.4, 100) == pytest.approx(v * (1 + (5.4 / 6 - 1) * 100 / 10000))
    v = c.value
    assert c.update(0.0, 100) == pytest.approx(v * (1 - 0.2 * 100 / 10000))  # clipped at -0.2
    assert ppo.FixedKLController(0.05).update(100.0, 1000) == 0.05


@pytest.fixture(scope="module")
def tiny():
    from chinwag.model import ChinwagLM

    tok = tasks.byte_tokenizer()
    torch.manual_seed(0)
    m = ChinwagLM(tasks.tiny_config(tok.vocab_size, d_model=32, n_layers=1, n_heads=2))
    return m, tok


def _len_reward(prompt, completion):
    return -abs(len(completion) - 3) / 3.0


def test_ppo_runs_logs_masked_metrics_and_changes_the_weights(tiny):
    m0, tok = tiny
    import copy

    policy, ref = copy.deepcopy(m0), common.clone_frozen(m0)
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = ppo.PPOConfig(steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=5, lr=1e-3)
    out = ppo.ppo_train(policy, ref, tok, ["a", "bb", "ccc"], _len_reward, cfg)
    rec = out["history"][-1]
    for k in (
        "objective/kl",
        "objective/entropy",
        "objective/scores",
        "policy/approxkl",
        "policy/clipfrac",
        "val/clipfrac",
        "loss/policy",
        "loss/value",
    ):
        assert k in rec and math.isfinite(rec[k])
    assert rec["objective/entropy"] > 0  # a true entropy over completion tokens, never padding
    assert out["history"][0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == ref at first
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), ref.parameters(), strict=True))


def test_ppo_early_stopping_and_ratio_threshold(tiny):
    m0, tok = tiny
    import copy

    policy, ref = copy.deepcopy(m0), common.clone_frozen(m0)
    cfg = ppo.PPOConfig(
        steps=1,
        batch_size=8,
        mini_batch_size=8,
        ppo_epochs=4,
        max_new_tokens=5,
        lr=0.05,
        warmup_steps=1,
        early_stopping=True,
        target_kl=1e-9,
        critic="shared",
    )
    rec = ppo.ppo_train(policy, ref, tok, ["a", "bb"], _len_reward, cfg)["history"][0]
    # epoch 1's update moved the policy; epoch 2's first mini-batch sees KL > 1.5 target and stops
    assert rec["policy/updates"] == 1 and rec["policy/early_stopped"] == 1
    cfg = ppo.PPOConfig(
        steps=1,
        batch_size=8,
        mini_batch_size=8,
        ppo_epochs=3,
        max_new_tokens=5,
        lr=0.05,
        warmup_steps=1,
        ratio_threshold=0.0,
    )
    rec = ppo.ppo_train(copy.deepcopy(m0), ref, tok, ["a"], _len_reward, cfg)["history"][0]
    assert rec["policy/skipped_minibatches"] == 3  # every mini-batch's mean ratio (1.0) > 0.0
