"""Tasks B and C (slow, seeded, CPU) assert the issue's thresholds; the fast tests check the pieces the
tasks rest on: the hidden judge, the word tokenizer, judge-labelled pairs, the rule principles."""

import pytest

from chinwag.align import demos_pref as D


def test_judge_by_hand():
    assert D.judge("please the cat sat on the mat now") == pytest.approx(1.0)
    assert D.judge("xx xx") == pytest.approx(-4.0 - 0.6)
    assert D.judge("thanks " * 8) == pytest.approx(0.5)


def test_word_tokenizer_makes_one_token_per_word():
    tok = D.c_tokenizer()
    for w in D.WORDS:
        assert len(tok.encode(" " + w)) == 1, w
    assert tok.decode(tok.encode("please the cat")) == "please the cat"


def test_judge_pairs_are_strictly_ordered_and_seeded():
    recs = D.judge_pairs(50, seed=3, with_margin=True)
    assert recs == D.judge_pairs(50, seed=3, with_margin=True)
    for r in recs:
        assert D.judge(r["chosen"]) > D.judge(r["rejected"])
        assert r["margin"] == pytest.approx(D.judge(r["chosen"]) - D.judge(r["rejected"]))


def test_principles_encode_the_judge_rules():
    from chinwag.align.constitutional import violation_rate

    ps = D.c_principles()
    assert violation_rate(["please the cat sat on the mat now"], ps) == 0.0
    assert violation_rate(["please xx cat sat on the mat now"], ps) == 1.0
    assert violation_rate(["the cat sat on the mat now"], ps) == 1.0


def test_unknown_task_or_algo_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preference task"):
        D.run_task("Z")
    with pytest.raises(ValueError, match="no algo"):
        D.run_task("B", "ppo")


@pytest.mark.slow
def test_task_b_dpo_with_sft_term():
    r = D.run_task("B", "dpo", seed=0)
    assert r["before"] <= 0.40 and r["after"] >= 0.90
    assert r["sampled_after"] >= r["sampled_before"]
    assert r["kl"] <= 3.0


@pytest.mark.slow
def test_task_c_reward_model():
    r = D.run_task("C", "rm", seed=0)
    assert r["after"] >= 0.90


@pytest.mark.slow
def test_task_c_ppo_with_rm_raises_hidden_judge():
    r = D.run_task("C", "ppo", seed=0)
    assert r["rm_accuracy"] >= 0.90
    assert r["after"] > r["before"] + 0.3
    assert r["kl"] <= 5.0 and r["rm_score_after"] > r["rm_score_before"]


@pytest.mark.slow
def test_task_c_constitutional_halves_violations():
    r = D.run_task("C", "constitutional", seed=0)
    assert r["after"] <= 0.5 * r["before"]
