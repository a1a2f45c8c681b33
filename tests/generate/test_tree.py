"""Tree search (MCTS over chunks) finds higher-scoring completions than greedy when the scorer is known."""

from __future__ import annotations

import pytest

from chinwag.generate.sampling import SamplingParams
from chinwag.generate.scorers import FunctionScorer, RewardModelScorer
from chinwag.generate.tree import tree_search
from tests.generate.helpers import CharTok, greedy, tiny


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_tree_search_beats_greedy_on_a_known_scorer(mode):
    m, tok = tiny(), CharTok()
    target = "f"  # the scorer rewards the letter f; the model's greedy answer never writes it
    scorer = FunctionScorer(lambda prompt, text: text.count(target), tok)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=0)
    g = greedy(m, [1, 2, 3], 12)
    g_score = tok.decode(g).count(target)
    r = tree_search(
        m, tok, [1, 2, 3], scorer, budget_nodes=40, branching=4, chunk_tokens=3, params=params, mode=mode
    )
    assert r.score == scorer.score([1, 2, 3], r.ids, r.text) and r.text == tok.decode(r.ids)
    assert r.score >= g_score + 2, (r.text, tok.decode(g))
    assert r.stats["nodes"] == 40 and r.stats["max_depth"] >= 2 and r.stats["pruned"] > 0
    assert len(r.ids) <= 12


def test_topk_tree_contains_the_greedy_path_and_respects_the_budget():
    m, tok = tiny(), CharTok()
    g = greedy(m, [1, 2, 3], 6)
    seen = []

    def reward(prompt_ids, ids):  # rewards agreeing with greedy: the search must walk the greedy path
        seen.append(list(ids))
        return sum(a == b for a, b in zip(ids, g, strict=False))

    params = SamplingParams(temperature=0, max_new_tokens=6)
    r = tree_search(
        m,
        tok,
        [1, 2, 3],
        RewardModelScorer(reward),
        budget_nodes=12,
        branching=3,
        chunk_tokens=2,
        params=params,
    )
    assert r.ids == g and r.score == 6
    assert len(seen) == 12 == r.stats["scorer_calls"]
    assert g[:2] in seen and g[:4] in seen


def test_search_stops_when_the_tree_is_exhausted():
    m, tok = tiny(), CharTok()
    params = SamplingParams(temperature=0, max_new_tokens=2)
    r = tree_search(
        m,
        tok,
        [1],
        FunctionScorer(lambda p, t: len(t), tok),
        budget_nodes=100,
        branching=2,
        chunk_tokens=2,
        params=params,
        keep=2,
    )
    assert r.stats["nodes"] == 2 and len(r.ids) == 2  # two terminal children, nothing left to expand
    with pytest.raises(ValueError):
        tree_search(m, tok, [1], FunctionScorer(lambda p, t: 0, tok), mode="bfs")
