"""Speculative decoding: greedy output is token-identical to the target's greedy decode, and sampled
output follows the target's distribution exactly (checked against the distribution computed by
enumeration), whatever the draft."""

from __future__ import annotations

import pytest
import torch

from chinwag.generate.sampling import SamplingParams, probs_from_logits
from chinwag.generate.speculative import accept_or_resample, speculative_generate
from tests.generate.helpers import greedy, tiny

PROMPTS = [[1, 2, 3], [5], [7, 7, 9, 11, 2], [30, 0, 12, 4, 4, 4, 1]]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_matches_target_greedy(k):
    target, other = tiny(0, d_model=48), tiny(1, d_model=16)
    p = SamplingParams(temperature=0, max_new_tokens=20)
    for prompt in PROMPTS:
        want = greedy(target, prompt, 20)
        r = speculative_generate(target, other, None, prompt, p, k=k)
        assert r.ids == want, (prompt, k)
        assert r.finish_reason == "length"
        assert 0 <= r.stats.acceptance_rate < 1  # a different random draft is often wrong
        assert r.stats.target_forwards < 20 or k == 1 or r.stats.acceptance_rate == 0
        # draft = target: every draft accepted, k + 1 tokens per target forward
        r = speculative_generate(target, target, None, prompt, p, k=k)
        assert r.ids == want
        assert r.stats.acceptance_rate == 1.0
        assert r.stats.target_forwards == -(-20 // (k + 1))


def test_stop_token_and_budget():
    target, draft = tiny(0), tiny(1)
    want = greedy(target, [1, 2, 3], 20)
    stop = want[6]
    r = speculative_generate(
        target,
        draft,
        None,
        [1, 2, 3],
        SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=[stop]),
        k=4,
    )
    assert r.ids == want[: want.index(stop)] and r.finish_reason == "stop"
    r = speculative_generate(
        target, target, None, [1, 2, 3], SamplingParams(temperature=0, max_new_tokens=7), k=3
    )
    assert r.ids == want[:7]
    with pytest.raises(ValueError):
        speculative_generate(target, tiny(2, vocab=16), None, [1], SamplingParams(), k=2)


def test_acceptance_rule_preserves_the_target_distribution_exactly():
    """The output distribution of one verify step, worked out analytically: accept x with q(x)min(1, p/q),
    else the residual. It must equal p for any p, q (including ones with different supports)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(12, generator=g) ** 4
        q = torch.rand(12, generator=g) ** 4
        p[torch.rand(12, generator=g) < 0.3] = 0
        q[torch.rand(12, generator=g) < 0.3] = 0
        q[0] = max(q[0], 0.1)
        p, q = p / p.sum(), q / q.sum()
        accept = q * torch.minimum(torch.ones_like(p), p / q.clamp(min=1e-30))
        residual = (p - q).clamp(min=0)
        out = accept + (1 - accept.sum()) * residual / residual.sum().clamp(min=1e-30)
        assert torch.allclose(out, p, atol=1e-6)
    # and the implementation takes the same decisions: p == q always accepts, disjoint supports never do
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert accept_or_resample(p, p[:1], [1])[0] == 1
    n, nxt = accept_or_resample(p, torch.tensor([[0.0, 0.0, 1.0]]), [2])
    assert n == 0 and nxt in (0, 1)


@torch.inference_mode()
def exact_two_token_distribution(model, prompt, params):
    V = model.config.vocab_size
    p1 = probs_from_logits(model(torch.tensor([prompt]))[0][:, -1], params, [[]])[0]
    batch = torch.tensor([prompt + [x] for x in range(V)])
    p2 = probs_from_logits(model(batch)[0][:, -1], params, [[x] for x in range(V)])
    return p1[:, None] * p2  # [x1, x2]


@pytest.mark.parametrize(
    "params, n, bound",
    [
        # full distributions: 75 cells carry mass; sampling noise at n = 2000 is TV ~0.047 (max ~0.066)
        (SamplingParams(temperature=1.0, top_k=0, top_p=1.0), 2000, 0.09),
        # truncated: target and draft supports are disjoint, so every token comes from the residual
        # norm(max(0, p - q)); 5 cells, noise at n = 1000 is TV ~0.018 (max ~0.035)
        (SamplingParams(temperature=0.7, top_k=6, top_p=0.9), 1000, 0.06),
    ],
)
def test_sampling_matches_target_distribution(params, n, bound):
    V, prompt = 12, [1, 2, 3]
    target, draft = tiny(0, vocab=V, d_model=16, std=0.6), tiny(5, vocab=V, d_model=16, std=0.6)
    p = exact_two_token_distribution(target, prompt, params)
    q = exact_two_token_distribution(draft, prompt, params)
    params.max_new_tokens = 2
    gen = torch.Generator().manual_seed(1234)
    counts = torch.zeros(V, V)
    acc = drafted = 0
    for _ in range(n):
        r = speculative_generate(target, draft, None, prompt, params, k=2, generator=gen)
        counts[r.ids[0], r.ids[1]] += 1
        acc, drafted = acc + r.stats.accepted, drafted + r.stats.drafted
    emp = counts / n
    tv = 0.5 * float((emp - p).abs().sum())
    tv_draft = 0.5 * float((q - p).abs().sum())
    assert tv < bound, tv
    assert tv_draft > 0.9, tv_draft  # the draft's own distribution is nowhere near: the test has power
    assert acc < drafted
