"""`chinwag train ...` through typer's CliRunner on the real top-level app."""

from __future__ import annotations

import dataclasses

from typer.testing import CliRunner

from chinwag.cli import app
from chinwag.train.cli import _DEFAULTS
from chinwag.train.config import TrainConfig
from chinwag.utils import read_json
from tests.train.helpers import metrics

runner = CliRunner()
FAST = ["--seq-len", "32", "--batch-size", "4", "-m", "n_layers=2", "--no-progress", "--eval-batches", "1"]


def test_help_defaults_match_config():
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for k, v in _DEFAULTS.items():
        assert d[k] == v, k
    r = runner.invoke(app, ["train", "pretrain", "--help"])
    assert r.exit_code == 0 and "--max-minutes" in r.output and "--resume" in r.output


def test_pretrain_resume_and_sft(tmp_path, pretrain_data, sft_data):
    run = tmp_path / "pre"
    r = runner.invoke(
        app,
        [
            "train",
            "pretrain",
            "--data",
            pretrain_data,
            "--out",
            str(run),
            "--max-steps",
            "3",
            "--seed",
            "7",
            "--lr",
            "1e-3",
            "--dtype",
            "fp32",
            "--threads",
            "1",
            *FAST,
        ],
    )
    assert r.exit_code == 0, r.output
    assert str(run) in r.output and "chinwag train sft --init-from" in r.output
    saved = read_json(run / "train_config.json")
    assert saved["seed"] == 7 and saved["model_overrides"] == {"n_layers": 2} and saved["max_steps"] == 3

    # --resume takes the saved config; only the flags given change (here: a longer run)
    r = runner.invoke(app, ["train", "pretrain", "--out", str(run), "--resume", "--max-steps", "5"])
    assert r.exit_code == 0, r.output
    assert [x["step"] for x in metrics(run)[0]][-1] == 5
    assert read_json(run / "train_config.json")["seed"] == 7

    r = runner.invoke(
        app,
        [
            "train",
            "sft",
            "--data",
            sft_data,
            "--init-from",
            str(run),
            "--out",
            str(tmp_path / "sft"),
            "--max-steps",
            "2",
            "--seq-len",
            "128",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert read_json(tmp_path / "sft" / "train_config.json")["mode"] == "sft"


def test_raw_text_is_prepared_inside_the_run(tmp_path, pretrain_text, tok_path):
    run = tmp_path / "raw"
    args = ["train", "pretrain", "--data", pretrain_text, "--out", str(run), "--max-steps", "2", *FAST]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--tokenizer" in r.output  # raw data needs a tokenizer
    r = runner.invoke(app, [*args, "--tokenizer", tok_path])
    assert r.exit_code == 0, r.output
    assert (run / "data" / "meta.json").is_file() and (run / "tokenizer.json").is_file()


def test_bad_input_is_one_clear_line(tmp_path, pretrain_data):
    out = str(tmp_path / "x")
    cases = [
        (["--data", pretrain_data, "--dtype", "fp8", "--max-steps", "1"], "dtype"),
        (["--data", pretrain_data, "--dtype", "fp16", "--device", "cpu", "--max-steps", "1"], "fp16"),
        (["--data", pretrain_data], "max_steps"),
        (["--data", str(tmp_path / "nope"), "--max-steps", "1"], "does not exist"),
        (["--resume", "--max-steps", "1"], "no checkpoints"),
        (["--data", pretrain_data, "--max-steps", "1", "--preset", "huge"], "preset"),
        (["--data", pretrain_data, "--max-steps", "1", "-m", "dropout"], "KEY=VALUE"),
    ]
    for extra, msg in cases:
        r = runner.invoke(app, ["train", "pretrain", "--out", out, *extra])
        assert r.exit_code != 0, (extra, r.output)
        assert msg in r.output, (extra, r.output)
        assert "Traceback" not in r.output
