"""Best-of-N and the scorers on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

from chinwag.generate.best_of_n import best_of_n, sample_n
from chinwag.generate.sampling import SamplingParams
from chinwag.generate.scorers import FunctionScorer, MeanLogProbScorer, RewardModelScorer, Scorer
from tests.generate.helpers import CharTok, tiny


def test_returns_the_max_scoring_sample_and_all_scores():
    m, tok = tiny(), CharTok(end_id=31)
    scorer = FunctionScorer(lambda prompt, text: text.count("c") - 0.01 * len(text), tok)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=7)
    r = best_of_n(m, tok, [1, 2, 3], scorer, n=8, params=params)
    assert len(r.candidates) == len(r.scores) == 8
    assert r.score == max(r.scores) and r.scores[r.index] == r.score
    assert r.ids == r.candidates[r.index].ids and r.text == tok.decode(r.ids)
    for c in r.candidates:
        assert c.score == pytest.approx(c.text.count("c") - 0.01 * len(c.text))
        assert 31 not in c.ids and len(c.ids) <= 12
        assert (c.finish_reason == "length") == (len(c.ids) == 12)
    assert len({tuple(c.ids) for c in r.candidates}) > 1  # really N different samples
    # same seed, same candidates
    again = best_of_n(m, tok, [1, 2, 3], scorer, n=8, params=params)
    assert [c.ids for c in again.candidates] == [c.ids for c in r.candidates]


@torch.inference_mode()
def test_batched_samples_equal_one_by_one_greedy_and_mean_logprob():
    m = tiny()
    p = SamplingParams(temperature=0, max_new_tokens=6)
    cands = sample_n(m, None, [4, 5], 3, p)
    ids = [4, 5]
    for _ in range(6):
        ids.append(int(m(torch.tensor([ids]))[0][0, -1].argmax()))
    assert all(c.ids == ids[2:] for c in cands)
    # the mean log-prob scorer is the average of the per-token log-probs
    lp = torch.log_softmax(m(torch.tensor([ids[:-1]]))[0][0], -1)
    want = float(sum(lp[i - 1, ids[i]] for i in range(2, len(ids)))) / 6
    s = MeanLogProbScorer(m)
    assert isinstance(s, Scorer)
    assert s.score([4, 5], ids[2:], "") == pytest.approx(want, abs=1e-5)
    assert s.score([4, 5], [], "") == -math.inf
    # as a best-of-N scorer it picks the sample the model itself is most sure of
    r = best_of_n(m, None, [4, 5], s, n=4, params=SamplingParams(temperature=1.5, max_new_tokens=6, seed=0))
    assert r.score == max(r.scores)


def test_reward_model_hook_sees_ids():
    m = tiny()
    seen = []

    def rm(prompt_ids, completion_ids):
        seen.append((prompt_ids, completion_ids))
        return -abs(len(completion_ids) - 3) + completion_ids.count(9)

    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=3, stop_token_ids=[0, 1, 2, 3])
    r = best_of_n(m, None, [7, 8], RewardModelScorer(rm), n=6, params=params)
    assert len(seen) == 6 and all(p == [7, 8] for p, _ in seen)
    assert [c for _, c in seen] == [c.ids for c in r.candidates]
    assert r.score == max(-abs(len(c) - 3) + c.count(9) for _, c in seen)
