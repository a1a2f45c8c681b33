"""Shared alignment helpers: padding, pair building, masked statistics, KL estimators, log-probs, rollouts."""

import math

import pytest
import torch

from chinwag.align import common, tasks
from chinwag.generate.sampling import SamplingParams


@pytest.fixture(scope="module")
def tok():
    return tasks.byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from chinwag.model import ChinwagLM

    torch.manual_seed(0)
    return ChinwagLM(tasks.tiny_config(tok.vocab_size, d_model=32, n_layers=1, n_heads=2)).eval()


def test_pad_batch_right_pads():
    ids, mask = common.pad_batch([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_build_pairs_marks_completion_and_its_end(tok):
    ids, attn, cm = common.build_pairs(tok, [[1, 2], [3]], [[5, tok.end_id], [6, 7, tok.end_id]])
    assert ids[0].tolist() == [1, 2, 5, tok.end_id]
    assert ids[1].tolist() == [3, 6, 7, tok.end_id]
    assert cm[0].tolist() == [False, False, True, True]
    assert cm[1].tolist() == [False, True, True, True]
    ids, attn, cm = common.build_pairs(tok, [[1, 2, 3]], [[5]])
    assert attn[0].tolist() == [True] * 4 and cm[0].tolist() == [False, False, False, True]


def test_masked_mean_var_whiten_match_torch_on_the_unmasked_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m = torch.tensor([False, True, True, False])
    assert common.masked_mean(x, m).item() == pytest.approx(2.5)
    assert common.masked_var(x, m).item() == pytest.approx(torch.tensor([2.0, 3.0]).var().item())  # Bessel
    assert common.masked_var(x, m, unbiased=False).item() == pytest.approx(0.25)
    w = common.masked_whiten(x, m)
    ref = (torch.tensor([2.0, 3.0]) - 2.5) / math.sqrt(0.5 + 1e-8)
    assert torch.allclose(w[m], ref, atol=1e-5)
    w2 = common.masked_whiten(x, m, shift_mean=False)
    assert torch.allclose(w2[m], ref + 2.5, atol=1e-5)
    # padding holding NaN/inf must not leak into the statistics
    y = torch.tensor([float("nan"), 2.0, 3.0, float("inf")])
    assert common.masked_mean(y, m).item() == pytest.approx(2.5)
    # per-row means and an empty mask
    x2 = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    m2 = torch.tensor([[True, True], [False, False]])
    assert common.masked_mean(x2, m2, dim=1).tolist() == [2.0, 0.0]


def test_kl_estimators_closed_forms():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    k1 = common.kl_estimate(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([0.5, -1.0, 0.0]))
    k3 = common.kl_estimate(logp, ref, "k3")
    r = ref - logp
    assert torch.allclose(k3, torch.exp(r) - 1 - r)
    assert (k3 >= 0).all() and k3[2] == 0
    assert torch.allclose(common.kl_estimate(logp, ref, "k2"), 0.5 * (logp - ref) ** 2)
    with pytest.raises(ValueError, match="estimator"):
        common.kl_estimate(logp, ref, "k9")


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    assert common.kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert common.kl_estimate(logp, logq, "k3").mean().item() == pytest.approx(true_kl, abs=5e-3)


def test_token_and_sequence_logprobs_match_a_manual_log_softmax(model, tok):
    ids, attn, cm = common.build_pairs(tok, [[tok.bos_id, 50, 51], [tok.bos_id]], [[52, tok.end_id], [53]])
    lp = common.token_logprobs(model, ids, attn)
    assert lp.shape == (2, ids.shape[1] - 1) and lp.dtype == torch.float32
    logits, _ = model(ids[:1], attention_mask=attn[:1])
    full = torch.log_softmax(logits[0].float(), -1)
    manual = [full[t, ids[0, t + 1]].item() for t in range(ids.shape[1] - 1)]
    assert lp[0].tolist() == pytest.approx(manual, abs=1e-5)
    seq = common.sequence_logprobs(model, ids, attn, cm)
    assert seq[0].item() == pytest.approx(manual[2] + manual[3], abs=1e-5)  # 52 and <|end|> only
    # row 1 is padded: its sum covers its one completion token, not the padding
    assert seq[1].item() == pytest.approx(lp[1, 0].item(), abs=1e-6)


def test_rollout_includes_the_stop_token_and_is_seeded(model, tok):
    pids = [common.chat_prompt_ids(tok, "12+30=")] * 3
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=4)
    a = common.rollout(model, tok, pids, params, n=2, seed=3)
    b = common.rollout(model, tok, pids, params, n=2, seed=3)
    assert a == b and len(a) == 6
    assert len({tuple(c) for c in a}) > 1  # each request has its own seed: samples differ
    for c in a:
        assert 1 <= len(c) <= 5
        stops = [i for i, t in enumerate(c) if t in (tok.end_id, tok.eos_id)]
        assert stops in ([], [len(c) - 1])  # a stop token, if any, is the last id
        if not stops:
            assert len(c) == 4  # no stop: truncated at max_new_tokens


def test_rollout_samples_from_the_current_weights(model, tok):
    import copy

    m = copy.deepcopy(model)
    pids = [common.chat_prompt_ids(tok, "1+1=")]
    params = SamplingParams(temperature=0.0, max_new_tokens=3)

    def greedy_first():
        with torch.no_grad():
            return int(m(torch.tensor([pids[0]]))[0][0, -1].argmax())

    first = common.rollout(m, tok, pids, params)[0][0]
    assert first == greedy_first()
    with torch.no_grad():
        m.model.norm.weight.mul_(-1.0)  # in place: flips every logit, so the argmax must change
    second = common.rollout(m, tok, pids, params)[0][0]
    assert second == greedy_first() and second != first


def test_last_token_index():
    m = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert common.last_token_index(m).tolist() == [2, 0, -1]


def test_arith_task_data_and_reward():
    train = set(tasks.arith_prompts(3000, 0, "train"))
    test = tasks.arith_prompts(500, 1, "test")
    assert len(set(test)) == 500 and not (train & set(test))  # held-out prompts are never trained on
    assert tasks.arith_prompts(10, 5) == tasks.arith_prompts(10, 5)
    data = tasks.arith_dataset(4000, 0, bias=0.6)
    off = [int(a) - sum(tasks.parse_prompt(p)) for p, a in data]
    assert set(off) == {0, 1}
    assert sum(off) / len(off) == pytest.approx(0.6, abs=0.03)
    assert tasks.arith_reward("07+32=", "39") == 1.0
    assert tasks.arith_reward("07+32=", " 39 ") == 1.0
    assert tasks.arith_reward("07+32=", "40") == 0.0
    assert tasks.arith_reward("07+32=", "39<|end|>junk") == 1.0
    assert tasks.arith_reward("07+32=", "") == 0.0
