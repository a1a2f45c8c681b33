"""Reward model: Bradley–Terry loss + margin + centering by hand, the score read at the last real token
(padding invariance), preference JSONL parsing (both layouts, malformed lines), save/load round trip."""

import json
import math

import pytest
import torch

from chinwag.align.rm import (
    PreferenceFileError,
    PrefPair,
    RewardModel,
    RMConfig,
    bradley_terry_loss,
    last_token_index,
    parse_preference,
    read_preference_records,
    read_preferences,
    train_reward_model,
)
from chinwag.align.tasks import byte_tokenizer
from chinwag.model import ModelConfig


def _rm(seed=0):
    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    return RewardModel(cfg, tok=tok, template="raw"), tok


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    rc, rr = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    loss, m = bradley_terry_loss(rc, rr)
    assert loss.item() == pytest.approx(-(_logsig(1.0) + _logsig(-1.0) + _logsig(-0.5)) / 3, rel=1e-6)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["margin"] == pytest.approx((1.0 - 1.0 - 0.5) / 3)
    assert (m["min_reward"], m["max_reward"]) == (-0.5, 2.5)
    assert m["mean_reward"] == pytest.approx(sum([1.0, -0.5, 2.0, 0.0, 0.5, 2.5]) / 6)


def test_margin_and_centering_by_hand():
    rc, rr, mg = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.5]), torch.tensor([0.5, 1.0])
    loss, _ = bradley_terry_loss(rc, rr, margin=mg, center_coef=0.01)
    want = -(_logsig(1.0 - 0.5) + _logsig(0.5 - 1.0)) / 2 + 0.01 * ((1.0 + 0.0) ** 2 + (2.0 + 1.5) ** 2) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_ties_count_as_wrong():
    _, m = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]))
    assert m["accuracy"] == 0.0


def test_last_token_index_right_left_and_none():
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    assert last_token_index(m).tolist() == [2, 4, 3]


def test_score_is_read_at_last_real_token_padding_invariant():
    rm, tok = _rm()
    rm.eval()
    seq = [tok.bos_id, *tok.encode("hello"), tok.eos_id]
    alone = rm(torch.tensor([seq]))
    padded = rm(torch.tensor([seq + [tok.pad_id] * 7]), torch.tensor([[True] * len(seq) + [False] * 7]))
    assert torch.allclose(alone, padded, atol=1e-5)
    # the score depends on the last real token, not on what sits in the padding
    other = rm(torch.tensor([seq + [5] * 7]), torch.tensor([[True] * len(seq) + [False] * 7]))
    assert torch.allclose(alone, other, atol=1e-5)
    # and changing the final real token changes it
    changed = rm(torch.tensor([seq[:-1] + [tok.end_id]]))
    assert not torch.allclose(alone, changed)


def test_score_ids_batch_equals_one_by_one():
    rm, tok = _rm()
    prompts = [[tok.bos_id, *tok.encode("a")], [tok.bos_id, *tok.encode("longer prompt")]]
    comps = [tok.encode("x") + [tok.eos_id], tok.encode("yy yy yy") + [tok.eos_id]]
    both = rm.score_ids(prompts, comps)
    single = [rm.score_ids([p], [c])[0] for p, c in zip(prompts, comps, strict=True)]
    assert both == pytest.approx(single, abs=1e-5)
    assert rm.score_texts(["a"], ["x"])[0] == pytest.approx(both[0], abs=1e-5)


def test_parse_standard_and_message_layouts():
    p, c, r, m = parse_preference({"prompt": "hi", "chosen": "hello", "rejected": "go away", "margin": 2})
    assert (p, c, r, m) == ("hi", "hello", "go away", 2.0)
    user = [{"role": "user", "content": "hi"}]
    rec = {
        "chosen": user + [{"role": "assistant", "content": "hello"}],
        "rejected": user + [{"role": "assistant", "content": "no"}],
    }
    assert parse_preference(rec) == (user, "hello", "no", None)
    rec = {
        "prompt": user,
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    assert parse_preference(rec) == (user, "A", "B", None)


@pytest.mark.parametrize(
    "line, msg",
    [
        ('{"prompt": "x", "chosen": "a"', "invalid JSON"),
        ('{"prompt": "x", "chosen": "a"}', "missing field 'rejected'"),
        ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "field 'prompt'"),
        ('{"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}', "field 'margin'"),
        ('{"chosen": "a", "rejected": "b"}', "missing field 'prompt'"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
            '"rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}]}',
            "differ",
        ),
        ('{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}', "assistant"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, msg):
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    f = tmp_path / "prefs.jsonl"
    f.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(PreferenceFileError) as e:
        read_preference_records(f)
    assert f"{f}:3:" in str(e.value) and msg in str(e.value)


def test_read_preferences_tokenizes_with_stop_token(tmp_path):
    tok = byte_tokenizer()
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "hi", "chosen": "yo", "rejected": "no"}) + "\n")
    (pair,) = read_preferences(f, tok)  # chat template
    assert pair.prompt[0] == tok.bos_id and pair.prompt[-1] == tok.assistant_id
    assert pair.chosen == tok.encode("yo") + [tok.end_id]
    with pytest.raises(PreferenceFileError, match="file not found"):
        read_preference_records(tmp_path / "missing.jsonl")


def test_training_learns_a_rule_and_save_load_round_trip(tmp_path):
    rm, tok = _rm()
    pairs = [
        PrefPair(
            [tok.bos_id, *tok.encode(f"q{i}")],
            tok.encode("good") + [tok.eos_id],
            tok.encode("bad") + [tok.eos_id],
        )
        for i in range(6)
    ]
    hist = train_reward_model(
        rm, pairs, RMConfig(steps=20, batch_size=6, lr=3e-3, log_every=10, center_coef=0.01)
    )
    assert hist[-1]["accuracy"] == 1.0 and hist[-1]["margin"] > 0
    before = rm.score_texts(["q1"], ["good"])
    rm.save(tmp_path / "rm")
    assert (
        not list((tmp_path / "rm").glob("*.pt")) and (tmp_path / "rm" / "reward_head.safetensors").is_file()
    )
    back = RewardModel.load(tmp_path / "rm")
    assert back.template == "raw"
    assert back.score_texts(["q1"], ["good"]) == pytest.approx(before, abs=1e-6)
    from chinwag.model import load_model

    load_model(tmp_path / "rm")  # the backbone folder stays a plain model folder


def test_cli_rm_from_scratch_with_validation(tmp_path):
    from typer.testing import CliRunner

    from chinwag.align.cli import app

    tok = byte_tokenizer()
    tok.save(tmp_path / "tok.json")
    data = tmp_path / "prefs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) + "\n" for i in range(6))
    )
    out = tmp_path / "rm"
    res = CliRunner().invoke(
        app,
        [
            "rm",
            "--data",
            str(data),
            "--val",
            str(data),
            "--out",
            str(out),
            "--tokenizer",
            str(tmp_path / "tok.json"),
            "--d-model",
            "32",
            "--n-layers",
            "1",
            "--n-heads",
            "2",
            "--steps",
            "20",
            "--batch-size",
            "6",
            "--lr",
            "3e-3",
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["val_accuracy"] == 1.0
    assert (
        RewardModel.load(out).score_texts(["q0"], ["good"])[0]
        > RewardModel.load(out).score_texts(["q0"], ["bad"])[0]
    )
    res = CliRunner().invoke(app, ["rm", "--data", str(data), "--out", str(out)])
    assert res.exit_code != 0 and "--base" in res.output
