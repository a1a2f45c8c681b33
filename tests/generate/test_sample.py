"""Sampling loop, UTF-8-safe streaming and the chat CLI on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from chinwag.cli import app
from chinwag.generate.cli import ChatSession
from chinwag.generate.sample import SamplingParams, generate, sample_token, stream_text
from chinwag.model.io import save_model
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config
from chinwag.tokenizer import Tokenizer
from chinwag.tokenizer.train import train_bpe

TEXT = (
    "hello there! how are you doing today? i am fine, thanks. what did you do this weekend? "
    "we went hiking by the lake and saw a heron. café, naïve, 東京, emoji 🙂 too.\n"
) * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe([TEXT], vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    model = ChinwagLM(get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=64))
    save_model(model, folder)
    tok.save(folder / "tokenizer.json")
    return folder


def test_greedy_is_argmax_and_top_k_one_is_greedy():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample_token(logits, SamplingParams(temperature=0), None) == 1
    gen = torch.Generator().manual_seed(0)
    picks = {sample_token(logits, SamplingParams(temperature=1.0, top_k=1), gen) for _ in range(20)}
    assert picks == {1}


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.7)
    picks = {sample_token(logits, p, gen) for _ in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never drawn


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=0)])
def test_bad_sampling_values_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()


def test_generate_matches_full_forward_greedy(run, tok):
    """Greedy decoding through the KV cache equals argmax of a fresh full forward at every step."""
    from chinwag.model.io import load_model

    model = load_model(run).eval()
    prompt = tok.encode("hello there! how are")
    out = list(generate(model, prompt, SamplingParams(temperature=0, max_new_tokens=12)))
    assert len(out) == 12
    ids = list(prompt)
    with torch.no_grad():
        for t in out:
            logits, _ = model(torch.tensor([ids]))
            assert int(logits[0, -1].argmax()) == t
            ids.append(t)


def test_same_seed_same_tokens_and_stop_ids(run, tok):
    from chinwag.model.io import load_model

    model = load_model(run).eval()
    prompt = tok.encode("what did you do")
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=7)
    a, b = list(generate(model, prompt, p)), list(generate(model, prompt, p))
    assert a == b
    stop = a[3]
    c = list(generate(model, prompt, p, stop_ids=[stop]))
    assert stop not in c and c == a[: a.index(stop)]


def test_generation_stops_at_context_end(run, tok):
    from chinwag.model.io import load_model

    model = load_model(run).eval()
    prompt = tok.encode(TEXT)[:60]
    out = list(generate(model, prompt, SamplingParams(temperature=0, max_new_tokens=50)))
    assert len(out) == 64 - 60
    with pytest.raises(ValueError, match="context"):
        list(generate(model, tok.encode(TEXT)[:64], SamplingParams(temperature=0)))


def test_stream_text_never_splits_utf8(tok):
    text = "東京 🙂 café"
    # one single-byte token per UTF-8 byte: every multi-byte character arrives split across ids
    byte_ids = [tok.ranks[bytes([b])] for b in text.encode()]
    pieces = list(stream_text(tok, byte_ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_chat_session_history_and_reset(run):
    s = ChatSession(run, system="be brief", params=SamplingParams(temperature=0, max_new_tokens=8))
    r1 = s.reply("hello there!")
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert s.messages[-1]["content"] == r1.strip()
    assert s.stats["completion_tokens"] >= 1 and s.stats["finish_reason"] in ("stop", "length")
    for _ in range(6):  # history longer than the 64-token context is truncated, not an error
        s.reply("how are you doing today? i am fine, thanks.")
    s.reset()
    assert s.messages == [{"role": "system", "content": "be brief"}]


def test_chat_session_set_system_save_load(run, tmp_path):
    s = ChatSession(run, params=SamplingParams(temperature=0, max_new_tokens=4))
    s.set("temperature", "0.5")
    s.set("stop", '["\\n"]')
    s.set("logit_bias", '{"5": -100}')
    assert s.params.temperature == 0.5 and s.params.stop == ["\n"] and s.params.logit_bias == {5: -100}
    with pytest.raises(ValueError, match="top_p"):
        s.set("top_p", "2")
    assert s.params.top_p == 0.95  # a bad value leaves the old params in place
    with pytest.raises(ValueError, match="unknown sampling field"):
        s.set("temprature", "1")
    s.set_system("you are terse")
    s.reply("hi")
    s.save(tmp_path / "conv.jsonl")
    t = ChatSession(run)
    t.load(tmp_path / "conv.jsonl")
    assert t.messages == s.messages and t.system == "you are terse"
    # the saved file is training data: the data layer reads it back
    from chinwag.data import read_records

    [conv] = list(read_records(tmp_path / "conv.jsonl"))
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        t.load(tmp_path / "bad.jsonl")


def test_chat_cli_one_shot_json_and_errors(run, tmp_path):
    r = CliRunner().invoke(
        app, ["chat", str(run), "--prompt", "hello", "--temperature", "0", "--max-new-tokens", "5"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.endswith("\n")
    r = CliRunner().invoke(
        app, ["chat", str(run), "--prompt", "hello", "--json", "--temperature", "0", "--max-new-tokens", "5"]
    )
    out = json.loads(r.output)
    assert set(out) >= {"reply", "finish_reason", "completion_tokens", "tokens_per_s", "context_used"}
    r = CliRunner().invoke(app, ["chat", str(tmp_path), "--prompt", "hi"])
    assert r.exit_code == 1 and "not a chinwag run" in r.output
    r = CliRunner().invoke(app, ["chat", str(run), "--prompt", "hi", "--top-p", "0"])
    assert r.exit_code == 1 and "top_p" in r.output


def test_chat_cli_interactive_commands(run, tmp_path):
    f = tmp_path / "c.jsonl"
    script = (
        f"hello\n/set temperature 0\n/system be nice\n/stats\n/save {f}\n/reset\n/load {f}\n/bogus\n\n/exit\n"
    )
    r = CliRunner().invoke(
        app, ["chat", str(run), "--temperature", "0", "--max-new-tokens", "4"], input=script
    )
    assert r.exit_code == 0, r.output
    for expected in (
        "temperature = 0",
        "system prompt set",
        "tokens_per_s",
        "saved to",
        "history cleared",
        "loaded 3 messages",
        "/set FIELD VALUE",
    ):
        assert expected in r.output, expected


def test_generate_command_batches_jsonl(run, tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        '"hello there"\n{"id": "b", "prompt": "how are you", "max_new_tokens": 3}\n'
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
    )
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(
        app,
        ["generate", str(run), "-i", str(src), "-o", str(out), "--temperature", "0", "--max-new-tokens", "6"],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == [0, "b", 2]
    assert rows[1]["usage"]["completion_tokens"] <= 3
    # batched greedy equals one-by-one greedy
    from chinwag.generate.engine import Engine
    from chinwag.model.io import load_model
    from chinwag.tokenizer.chat import render

    eng = Engine(load_model(run).eval(), Tokenizer.load(run / "tokenizer.json"), max_batch=1)
    tok = Tokenizer.load(run / "tokenizer.json")
    ids = render([{"role": "user", "content": "hello there"}], tok, add_generation_prompt=True).ids
    [alone] = eng.generate([ids], SamplingParams(temperature=0, max_new_tokens=6))
    assert alone.text == rows[0]["text"]


@pytest.mark.parametrize("strategy", ["beam", "best-of-n", "tree", "speculative"])
def test_generate_command_strategies(run, tmp_path, strategy):
    src = tmp_path / "p.jsonl"
    src.write_text('"hello"\n')
    r = CliRunner().invoke(
        app,
        [
            "generate",
            str(run),
            "-i",
            str(src),
            "--strategy",
            strategy,
            "--draft",
            str(run),
            "--max-new-tokens",
            "4",
            "--n",
            "2",
            "--budget-nodes",
            "6",
            "--num-beams",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.splitlines()[-1])
    assert "text" in row and row["id"] == 0


def test_generate_command_bad_input_names_the_line(run, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('"ok"\n{"prompt": 3}\n')
    r = CliRunner().invoke(app, ["generate", str(run), "-i", str(src)])
    assert r.exit_code == 1 and "p.jsonl:2" in r.output
    src.write_text('{"prompt": "x", "temperature": -1}\n')
    r = CliRunner().invoke(app, ["generate", str(run), "-i", str(src)])
    assert r.exit_code == 1 and "p.jsonl:1" in r.output and "temperature" in r.output
