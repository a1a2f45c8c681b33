"""Reward wrappers and composite components: each scored on hand-made texts, each logged separately."""

import pytest
import torch

from chinwag.align import rewards, tasks


def test_function_and_model_rewards():
    r = rewards.as_reward(tasks.arith_reward)
    scores, parts = r(["07+32=", "01+01="], ["39", "3"])
    assert scores == [1.0, 0.0] and parts == {"arith_reward": [1.0, 0.0]}

    class FakeRM:
        def score_texts(self, prompts, completions):
            return [float(len(c)) for c in completions]

    s, parts = rewards.as_reward(FakeRM())(["p", "q"], ["ab", "abcd"])
    assert s == [2.0, 4.0] and parts == {"rm": [2.0, 4.0]}
    with pytest.raises(TypeError):
        rewards.as_reward(42)


def test_builtin_components():
    b = ["please say thanks", "xx xx bad", "", "the the the cat"]
    p = [""] * len(b)
    assert rewards.LengthTarget(3)(p, b)[0] == pytest.approx([0.0, 0.0, -1.0, -1 / 3])
    assert rewards.RequiredWords(["please", "thanks"])(p, b)[0] == [1.0, 0.0, 0.0, 0.0]
    assert rewards.BannedWords(["xx"])(p, b)[0] == [0.0, -2.0, 0.0, 0.0]
    assert rewards.DistinctN(2)(p, b)[0] == pytest.approx([1.0, 1.0, 1.0, 2 / 3])
    assert rewards.RepetitionPenalty()(p, b)[0] == pytest.approx([0.0, -1 / 3, 0.0, -0.5])


def test_composite_weights_and_logs_every_component():
    comp = rewards.Composite(
        {
            "correct": (tasks.arith_reward, 1.0),
            "short": (rewards.LengthTarget(1), 0.5),
            "clean": (rewards.BannedWords(["x"]), 2.0),
        }
    )
    scores, parts = comp(["07+32=", "07+32="], ["39", "40 x"])
    assert parts == {"correct": [1.0, 0.0], "short": [0.0, -1.0], "clean": [0.0, -1.0]}
    assert scores == pytest.approx([1.0, 0.0 - 0.5 - 2.0])


def test_from_config_builds_a_composite():
    comp = rewards.from_config(
        {
            "correct": {"fn": "chinwag.align.tasks:arith_reward", "weight": 1.0},
            "short": {"type": "length", "target": 2, "weight": 0.1},
        }
    )
    s, parts = comp(["07+32="], ["39"])
    assert set(parts) == {"correct", "short"} and s == pytest.approx([1.0 - 0.1 * 0.5])
    with pytest.raises(ValueError, match="unknown type"):
        rewards.from_config({"x": {"type": "nope"}})
    with pytest.raises(ValueError, match="module:function"):
        rewards.load_function("no_colon")


def test_coherence_is_the_mean_logprob_under_the_reference():
    from chinwag.align import common
    from chinwag.model import ChinwagLM

    tok = tasks.byte_tokenizer()
    torch.manual_seed(0)
    ref = ChinwagLM(tasks.tiny_config(tok.vocab_size, d_model=32, n_layers=1, n_heads=2)).eval()
    pids = [common.chat_prompt_ids(tok, "hi")]
    comp = [[ord("a"), ord("b"), tok.end_id]]
    s, _ = rewards.Coherence(ref, tok)(["hi"], ["ab"], pids, comp)
    ids, attn, cm = common.build_pairs(tok, pids, comp)
    expected = common.sequence_logprobs(ref, ids, attn, cm).item() / 3
    assert s[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="ids"):
        rewards.Coherence(ref, tok)(["hi"], ["ab"])


def test_safety_verdict_with_a_stub_guard():
    class Verdict:
        def __init__(self, blocked):
            self.blocked = blocked

    class Guard:
        def check_output(self, text):
            return Verdict("kill" in text)

    s, parts = rewards.SafetyVerdict(Guard())(["", ""], ["hello", "kill it"])
    assert s == [1.0, -1.0] and parts == {"safety": [1.0, -1.0]}
    assert isinstance(rewards.SafetyVerdict.available(), bool)
