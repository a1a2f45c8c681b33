from __future__ import annotations

import json

from typer.testing import CliRunner

from chinwag.cli import app
from tests.data.helpers import chat, write_jsonl

runner = CliRunner()


def test_prepare_and_stats(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat(i, turns=4) for i in range(30)])
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        ["data", "prepare", "--source", src, "--out", str(out), "--tokenizer", "cl100k_base",
         "--val-fraction", "0.2", "--seed", "3"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "kept" in r.output and "Next:" in r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["val_fraction"] == 0.2
    r = runner.invoke(app, ["data", "stats", str(out)])
    assert r.exit_code == 0, r.output
    assert "conversations" in r.output and "vocab coverage" in r.output and "tokens per example" in r.output
    assert "deduplicated" in r.output


def test_stats_raw_source_with_tokenizer(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat(i, turns=3) for i in range(5)])
    r = runner.invoke(app, ["data", "stats", src, "--tokenizer", "cl100k_base"])
    assert r.exit_code == 0, r.output
    assert "turns / conversation" in r.output and "median 3" in r.output and "vocab coverage" in r.output


def test_prepare_bad_input_is_one_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [chat(1), '{"messages": [{"role": "robot", "content": "x"}]}'])
    r = runner.invoke(app, ["data", "prepare", "--source", src, "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "bad.jsonl:2:" in r.output and "unknown role 'robot'" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app, ["data", "prepare", "--source", src, "--out", str(tmp_path / "o"), "--on-error", "skip"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["skipped_malformed"] == {
        "unknown_role": 1
    }
    r = runner.invoke(
        app, ["data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 1 and "no such file or folder" in r.output
    r = runner.invoke(
        app, ["data", "prepare", "--source", src, "--out", str(tmp_path / "o"), "--mode", "chat"]
    )
    assert r.exit_code != 0 and "--mode" in r.output
