"""Sampling loop, UTF-8-safe streaming and the chat CLI on a tiny random model."""

from __future__ import annotations

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
    s = ChatSession(run, system="be brief")
    p = SamplingParams(temperature=0, max_new_tokens=8)
    r1 = s.reply("hello there!", p)
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert s.messages[-1]["content"] == r1.strip()
    for _ in range(6):  # history longer than the 64-token context is truncated, not an error
        s.reply("how are you doing today? i am fine, thanks.", p)
    s.reset()
    assert s.messages == [{"role": "system", "content": "be brief"}]


def test_chat_cli_one_shot_and_errors(run, tmp_path):
    r = CliRunner().invoke(
        app, ["chat", str(run), "--prompt", "hello", "--temperature", "0", "--max-new-tokens", "5"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.endswith("\n")
    r = CliRunner().invoke(app, ["chat", str(tmp_path), "--prompt", "hi"])
    assert r.exit_code == 1 and "not a chinwag run" in r.output
    r = CliRunner().invoke(app, ["chat", str(run), "--prompt", "hi", "--top-p", "0"])
    assert r.exit_code == 1 and "top_p" in r.output


def test_chat_cli_interactive_commands(run):
    r = CliRunner().invoke(
        app,
        ["chat", str(run), "--temperature", "0", "--max-new-tokens", "4"],
        input="hello\n/reset\n\n/exit\n",
    )
    assert r.exit_code == 0, r.output
    assert "history cleared" in r.output
