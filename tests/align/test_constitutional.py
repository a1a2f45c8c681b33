"""Constitutional critique–revise: principle files (YAML/JSON, clear errors), rule critiques and minimal
revisions, SFT + (revision ≻ original) pair writing, violation rates."""

import json

import pytest

from chinwag.align.constitutional import (
    Principle,
    PrincipleFileError,
    RuleCritic,
    build_examples,
    critique_revise,
    load_principles,
    violation_rate,
    write_examples,
)
from chinwag.align.rm import read_preference_records

RULES = [
    Principle("polite", "Is it polite?", "Make it polite.", {"require": ["please"]}),
    Principle("clean", "Any banned words?", "Remove them.", {"ban": ["xx"]}),
    Principle(
        "length", "6-10 words?", "Fix the length.", {"min_words": 6, "max_words": 10, "filler": ["ok"]}
    ),
]


def test_yaml_and_json_principles(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text(
        "principles:\n"
        "  - name: polite\n    critique: Is it polite?\n    revision: Make it polite.\n"
        "    rule: {require: [please]}\n"
        "  - name: harmless\n    critique: Is it harmful?\n    revision: Remove harm.\n"
    )
    ps = load_principles(y)
    assert [p.name for p in ps] == ["polite", "harmless"] and ps[0].rule == {"require": ["please"]}
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"name": "a", "critique": "c", "revision": "r"}]))
    assert load_principles(j)[0].rule is None


@pytest.mark.parametrize(
    "data, msg",
    [
        ([{"name": "a", "critique": "c"}], "principles[0]: field 'revision'"),
        ([{"name": "a", "critique": "c", "revision": "r", "rule": {"bogus": 1}}], "unknown key"),
        ([{"name": "a", "critique": "c", "revision": "r", "rule": {"max_words": -1}}], "max_words"),
        ([{"name": "a", "critique": "c", "revision": "r", "rule": {"ban_regex": "("}}], "ban_regex"),
        ([], "non-empty list"),
    ],
)
def test_bad_principles_name_entry_and_field(tmp_path, data, msg):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(PrincipleFileError) as e:
        load_principles(f)
    assert str(f) in str(e.value) and msg in str(e.value)


def test_bad_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("- name: a\n  critique: [unclosed\n")
    with pytest.raises(PrincipleFileError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_principles(f)


def test_rule_critique_and_minimal_revision():
    critic = RuleCritic(seed=0)
    rev, trace = critique_revise("say cat", "xx cat xx", RULES, critic)
    words = rev.split()
    assert "please" in words and "xx" not in words and 6 <= len(words) <= 10
    assert [t["principle"] for t in trace] == ["polite", "clean", "length"]  # one pass sufficed
    long = " ".join(["cat"] * 20) + " please"
    rev, _ = critique_revise("q", long, RULES, critic)
    assert len(rev.split()) == 10 and "please" in rev.split()  # trimming keeps the required word
    ok = "please the cat sat on the mat"
    assert critique_revise("q", ok, RULES, critic) == (ok, [])


def test_build_and_write_examples(tmp_path):
    prompts = ["p1", "p2"]
    responses = ["xx", "please the cat sat on the mat"]
    sft, pairs, traces = build_examples(prompts, responses, RULES, RuleCritic())
    assert len(sft) == 2 and len(pairs) == 1  # the compliant answer makes an SFT target but no pair
    assert pairs[0]["rejected"] == "xx" and pairs[0]["chosen"] == sft[0]["messages"][1]["content"]
    out = write_examples(tmp_path / "cai", sft, pairs, traces)
    recs = read_preference_records(out / "pairs.jsonl")  # readable by `chinwag align dpo|rm`
    assert recs == [("p1", pairs[0]["chosen"], "xx", None)]
    lines = (out / "sft.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["messages"][1]["content"] == responses[1]
    assert json.loads((out / "report.json").read_text())["n_pairs"] == 1


def test_violation_rate():
    assert violation_rate(["please a b", "xx", "please the cat sat on mat"], RULES) == pytest.approx(2 / 3)
    assert violation_rate([], RULES) == 0.0


def test_cli_constitutional_with_rules(tmp_path):
    from typer.testing import CliRunner

    from chinwag.align.cli import app

    p = tmp_path / "p.yaml"
    p.write_text("- name: clean\n  critique: Any xx?\n  revision: Remove xx.\n  rule: {ban: [xx]}\n")
    r = tmp_path / "r.jsonl"
    r.write_text(
        json.dumps({"prompt": "hi", "response": "hello xx"})
        + "\n"
        + json.dumps({"prompt": "a", "response": "b"})
        + "\n"
    )
    res = CliRunner().invoke(
        app, ["constitutional", "--principles", str(p), "--responses", str(r), "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["violation_rate_before"] == 0.5 and rep["violation_rate_after_revision"] == 0.0
    assert read_preference_records(tmp_path / "out" / "pairs.jsonl") == [("hi", "hello", "hello xx", None)]
    p.write_text("- name: clean\n  critique: Any xx?\n")
    res = CliRunner().invoke(
        app, ["constitutional", "--principles", str(p), "--responses", str(r), "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 1 and "principles[0]: field 'revision'" in res.output.replace("\n", "")


def test_model_critic_runs_the_cai_conversation():
    import torch

    from chinwag.align.constitutional import ModelCritic
    from chinwag.align.tasks import byte_tokenizer
    from chinwag.model import ChinwagLM, ModelConfig

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = ChinwagLM(
        ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=256)
    )
    critic = ModelCritic(model, tok, max_new_tokens=4)
    seen = []
    critic._reply_orig = critic._reply
    critic._reply = lambda msgs: seen.append(msgs) or critic._reply_orig(msgs) or "x"
    rev, trace = critique_revise("hi", "hello", [RULES[0]], critic, rounds=1)
    assert isinstance(rev, str) and len(trace) == 1
    crit_msgs, rev_msgs = seen
    assert [m["role"] for m in crit_msgs] == ["user", "assistant", "user"]
    assert crit_msgs[2]["content"] == RULES[0].critique
    assert [m["role"] for m in rev_msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert rev_msgs[4]["content"] == RULES[0].revision
