"""Every sampling control on hand-made logits: masks, penalties, bias, temperature, seeds, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from chinwag.generate.sampling import (
    SamplingParams,
    probs_from_logits,
    process_logits,
    sample,
    token_logprobs,
)

P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
LOGITS = P.log()[None]  # [1, 6]: softmax(LOGITS) == P


def sp(**kw) -> SamplingParams:
    base = dict(temperature=1.0, top_k=0, top_p=1.0)
    return SamplingParams(**{**base, **kw})


def kept(**kw) -> list[int]:
    return torch.isfinite(process_logits(LOGITS, sp(**kw)))[0].nonzero()[:, 0].tolist()


def test_no_controls_is_plain_softmax():
    assert torch.allclose(probs_from_logits(LOGITS, sp()), P[None], atol=1e-6)


def test_greedy_keeps_only_the_argmax():
    probs = probs_from_logits(LOGITS, SamplingParams(temperature=0))
    assert probs[0].tolist() == [1.0, 0, 0, 0, 0, 0]
    assert sample(LOGITS.repeat(3, 1), SamplingParams(temperature=0)).tolist() == [0, 0, 0]


def test_top_k_keeps_k_tokens():
    assert kept(top_k=2) == [0, 1]
    assert kept(top_k=4) == [0, 1, 2, 3]
    assert torch.allclose(probs_from_logits(LOGITS, sp(top_k=2))[0, :2], P[:2] / P[:2].sum())


def test_top_p_keeps_the_smallest_nucleus():
    assert kept(top_p=0.6) == [0, 1]  # 0.4 + 0.25 = 0.65 >= 0.6
    assert kept(top_p=0.66) == [0, 1, 2]
    assert kept(top_p=0.01) == [0]  # the top token always survives


def test_min_p_drops_tokens_far_below_the_top():
    assert kept(min_p=0.5) == [0, 1]  # threshold 0.2: 0.25 stays, 0.15 goes
    assert kept(min_p=0.2) == [0, 1, 2, 3]  # threshold 0.08


def test_temperature_sharpens_and_flattens():
    def entropy(t):
        p = probs_from_logits(LOGITS, sp(temperature=t))[0]
        return float(-(p * p.log()).sum())

    assert entropy(0.5) < entropy(1.0) < entropy(2.0)
    assert torch.allclose(probs_from_logits(LOGITS, sp(temperature=0.5))[0], P**2 / (P**2).sum(), atol=1e-6)


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    out = process_logits(logits, sp(repetition_penalty=2.0), history=[[0, 1, 1]])
    assert out[0].tolist() == [1.0, -4.0, 1.0, 3.0]  # unseen ids untouched


def test_presence_and_frequency_penalties():
    logits = torch.zeros(1, 4)
    out = process_logits(logits, sp(presence_penalty=0.5, frequency_penalty=0.25), history=[[2, 2, 2, 1]])
    assert out[0].tolist() == pytest.approx([0.0, -0.75, -1.25, 0.0])
    # without history (or with penalties off) nothing changes
    assert process_logits(logits, sp(presence_penalty=0.5), history=None)[0].tolist() == [0.0] * 4


def test_penalties_reduce_repeats_in_samples():
    logits = torch.zeros(1, 4)
    gen = torch.Generator().manual_seed(0)
    n = [int(sample(logits, sp(frequency_penalty=5.0), [[0] * 3], gen)) for _ in range(200)]
    assert 0 not in n


def test_logit_bias_forces_and_bans():
    gen = torch.Generator().manual_seed(0)
    forced = {int(sample(LOGITS, sp(logit_bias={5: 100.0}), None, gen)) for _ in range(50)}
    assert forced == {5}
    assert int(sample(LOGITS, SamplingParams(temperature=0, logit_bias={0: float("-inf")}))) == 1
    with pytest.raises(ValueError, match="logit_bias"):
        process_logits(LOGITS, sp(logit_bias={99: 1.0}))


def test_per_row_params_mix_greedy_and_sampled():
    x = LOGITS.repeat(2, 1)
    probs = probs_from_logits(x, [SamplingParams(temperature=0), sp(top_k=3)])
    assert probs[0].tolist() == [1.0, 0, 0, 0, 0, 0]
    assert (probs[1, 3:] == 0).all() and (probs[1, :3] > 0).all()
    with pytest.raises(ValueError, match="2 rows"):
        process_logits(x, [sp()])


def test_samples_follow_the_processed_distribution():
    gen = torch.Generator().manual_seed(1)
    n = 4000
    draws = sample(LOGITS.repeat(n, 1), sp(top_k=4), None, gen)
    freq = torch.bincount(draws, minlength=6).float() / n
    want = probs_from_logits(LOGITS, sp(top_k=4))[0]
    assert (freq - want).abs().max() < 0.03 and freq[4:].sum() == 0


def test_per_row_generators_make_rows_independent_of_batch_mates():
    p = sp()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    alone = [int(sample(LOGITS, p, None, [g(7)])) for _ in range(1)]
    seq_alone = []
    ga = g(7)
    for _ in range(20):
        seq_alone.append(int(sample(LOGITS, p, None, [ga])))
    ga, gb = g(7), g(123)
    seq_batched = []
    for _ in range(20):
        out = sample(LOGITS.repeat(2, 1), [sp(top_k=2), p], None, [gb, ga])
        seq_batched.append(int(out[1]))
    assert seq_batched == seq_alone and alone[0] == seq_alone[0]
    assert len(set(seq_alone)) > 1  # really sampling


def test_token_logprobs_are_raw_log_softmax():
    logits = torch.randn(3, 10)
    chosen = torch.tensor([1, 4, 9])
    lp, ids, top = token_logprobs(logits, chosen, k=3)
    ref = torch.log_softmax(logits, -1)
    assert lp.shape == (3,) and ids.shape == (3, 3) and top.shape == (3, 3)
    assert torch.allclose(lp, ref[torch.arange(3), chosen])
    assert torch.allclose(top, ref.topk(3).values) and (ids == ref.topk(3).indices).all()
    lp0, ids0, top0 = token_logprobs(logits, chosen, k=0)
    assert ids0.shape == (3, 0) and top0.shape == (3, 0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 2.0),
        ("repetition_penalty", 0.0),
        ("presence_penalty", math.inf),
        ("logit_bias", {"a": 1.0}),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
        ("max_new_tokens", 0),
        ("seed", 1.5),
        ("top_logprobs", 50),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()


def test_a_lone_stop_string_is_one_stop():
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]


def test_degenerate_inputs_never_give_nan_or_crash_the_batch():
    import torch

    from chinwag.generate.sampling import SamplingParams, sample

    logits = torch.randn(3, 16)
    tiny_t = SamplingParams(temperature=1e-9, top_k=0, top_p=1.0)
    assert tiny_t.greedy
    assert int(sample(logits[0], tiny_t)) == int(logits[0].argmax())
    # a bias that bans every token falls back to the raw argmax instead of sampling from NaN
    ban_all = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, logit_bias={i: float("-inf") for i in range(16)}
    )
    out = sample(logits, [ban_all, ban_all, SamplingParams(temperature=0)], history=[[], [], []])
    assert out.tolist() == logits.argmax(-1).tolist()


def test_engine_rejects_out_of_vocab_logit_bias_at_admission():
    import pytest
    import torch

    from chinwag.generate.engine import Engine
    from chinwag.generate.sampling import SamplingParams
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config

    torch.manual_seed(0)
    eng = Engine(ChinwagLM(get_config("tiny", vocab_size=64, max_seq_len=32)), None, max_batch=2)
    with pytest.raises(ValueError, match="logit_bias"):
        eng.add_request([1, 2], SamplingParams(logit_bias={999: 1.0}))
    assert not eng.has_work()
