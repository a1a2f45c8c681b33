"""`chinwag tokenizer train|encode|decode|info` through the real top-level app."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chinwag.tokenizer import Tokenizer

from .conftest import corpus_texts


@pytest.fixture(scope="module")
def app():
    from chinwag.cli import app

    return app


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_train_then_encode_decode_info(app, runner, tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(corpus_texts(60_000)), encoding="utf-8")
    out = tmp_path / "tok.json"
    res = runner.invoke(
        app,
        ["tokenizer", "train", "--data", str(data), "--vocab-size", "400", "--out", str(out), "--seed", "1"],
    )
    assert res.exit_code == 0, res.output
    assert "vocab size: 400" in res.output and "tokens per character" in res.output and " s\n" in res.output
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400

    res = runner.invoke(app, ["tokenizer", "encode", "--tokenizer", str(out), "First Citizen: <|end|>"])
    assert res.exit_code == 0, res.output
    ids = [int(x) for x in res.output.split()]
    assert ids == tok.encode("First Citizen: <|end|>")

    res = runner.invoke(app, ["tokenizer", "decode", "--tokenizer", str(out), *map(str, ids)])
    assert res.exit_code == 0 and res.output == "First Citizen: <|end|>\n"

    res = runner.invoke(app, ["tokenizer", "info", "--tokenizer", str(out)])
    assert res.exit_code == 0, res.output
    assert "400" in res.output and f"<|end|>={tok.end_id}" in res.output and "sample ids" in res.output


def test_pretrained_specs(app, runner):
    res = runner.invoke(app, ["tokenizer", "encode", "-t", "cl100k_base", "hello world"])
    assert res.exit_code == 0 and res.output.split() == ["15339", "1917"]
    res = runner.invoke(app, ["tokenizer", "decode", "-t", "o200k_base", "24912", "2375"])
    assert res.exit_code == 0 and res.output == "hello world\n"


def test_clear_errors(app, runner, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(app, ["tokenizer", "info", "--tokenizer", str(bad)])
    assert res.exit_code != 0 and "invalid JSON" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["tokenizer", "encode", "--tokenizer", str(tmp_path / "nope.json"), "x"])
    assert res.exit_code != 0 and "no such tokenizer file" in res.output
    res = runner.invoke(app, ["tokenizer", "decode", "-t", "cl100k_base", "100256"])
    assert res.exit_code != 0 and "not in this tokenizer" in res.output
    res = runner.invoke(app, ["tokenizer", "train", "--data", str(tmp_path / "missing"), "--out", str(bad)])
    assert res.exit_code == 1 and "missing" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["tokenizer", "train", "--data", "x", "--out", str(bad), "--vocab-size", "100"])
    assert res.exit_code != 0 and "272" in res.output
