"""Temperature scaling of the doc heads (calib.json), and the `chinwag dlp train` / `calibrate` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chinwag.cli import app
from chinwag.dlp import synth
from chinwag.dlp.calibrate import CALIB, calibrate_run, fit_calibration, load_temperatures
from chinwag.dlp.metrics import ece, sigmoid
from chinwag.dlp.model import DOC_HEADS

runner = CliRunner()


def test_fit_recovers_an_overconfident_temperature():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, size=(4000, 4))
    y = (rng.random(true.shape) < sigmoid(true)).astype(float)
    res = fit_calibration(3.0 * true, y)  # logits 3x too confident: T should come out near 3
    for h in DOC_HEADS:
        assert 2.6 < res["temperature"][h] < 3.4
        assert res["ece_after"][h] < 0.5 * res["ece_before"][h] and res["ece_after"][h] < 0.03
        assert res["nll_after"][h] < res["nll_before"][h]
        assert res["positives"][h] == int(y[:, DOC_HEADS.index(h)].sum())
    assert res["n"] == 4000 and res["notes"] == {}
    # applying T reproduces the reported ECE
    k = 0
    assert ece(y[:, k], sigmoid(3.0 * true[:, k] / res["temperature"]["sensitivity"])) == pytest.approx(
        res["ece_after"]["sensitivity"]
    )


def test_degenerate_heads_keep_t_one_with_a_note():
    z = np.array([[2.0, 1.0, -1.0, 0.0], [-2.0, -1.0, 1.0, 0.0], [1.0, 3.0, -2.0, 0.0]])
    y = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=float)
    res = fit_calibration(z, y)
    assert res["temperature"]["exposure"] == 1.0 and "all 3 val labels are 0" in res["notes"]["exposure"]
    assert res["temperature"]["context"] == 1.0 and "backwards" in res["notes"]["context"]
    assert res["temperature"]["obfuscation"] == 1.0  # all-zero logits: nothing to scale
    assert res["temperature"]["sensitivity"] != 1.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained through the CLI (generated data, trained tokenizer, curriculum, calibration)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["dlp", "train", "--out", str(out), "--n-train", "120", "--n-val", "20", "--vocab-size", "600",
            "--model", "dlp-tiny", "--steps", "6", "--tokens-per-step", "1024", "--max-len", "256",
            "--phase1-max-len", "128", "--segment-len", "64", "--eval-every", "3", "--ckpt-every", "3",
            "--warmup", "2", "--seed", "1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_train_command_writes_the_run_folder_contract(run):
    out, output = run
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_config.json", "metrics.jsonl",
                 "calib.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "6 steps" in output and "val span P/R/F1" in output and "temperature scaling" in output
    tc = json.loads((out / "train_config.json").read_text())
    assert tc["max_len"] == 256 and tc["segment_len"] == 64 and tc["steps"] == 6 and tc["phase1_frac"] == 0.2
    assert tc["data"]["n_train"] == 120 and tc["data"]["seed"] == 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6] and "val_span_f1" in lines[0]
    calib = json.loads((out / "calib.json").read_text())
    assert set(calib["temperature"]) == set(DOC_HEADS) and calib["max_len"] == 256 and calib["n"] == 20
    assert all(calib["temperature"][h] > 0 for h in DOC_HEADS)
    assert load_temperatures(out) == {h: float(calib["temperature"][h]) for h in DOC_HEADS}
    assert load_temperatures(out / "nowhere") == {h: 1.0 for h in DOC_HEADS}


def test_resume_of_a_finished_run_and_refusals(run, tmp_path):
    out, _ = run
    before = (out / "model.safetensors").read_bytes()
    r = runner.invoke(app, ["dlp", "train", "--out", str(out), "--resume", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    assert "6 steps" in r.output and (out / "model.safetensors").read_bytes() == before
    r = runner.invoke(app, ["dlp", "train", "--out", str(out), "--steps", "3"])
    assert r.exit_code == 1 and "already holds a run" in r.output and "--resume" in r.output
    r = runner.invoke(app, ["dlp", "train", "--out", str(tmp_path / "new"), "--resume"])
    assert r.exit_code == 1 and "train_config.json: file not found" in r.output


def test_calibrate_command_with_a_val_file(run, tmp_path):
    out, _ = run
    val = tmp_path / "val.jsonl"
    synth.write_jsonl(synth.generate(15, seed=7, split="val"), val)
    r = runner.invoke(app, ["dlp", "calibrate", str(out), "--val", str(val)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / CALIB).read_text())["n"] == 15 and "ECE" in r.output
    res = calibrate_run(out, synth.generate(10, seed=8, split="val"))
    assert res["n"] == 10


def test_bad_input_gives_one_line_errors(run, tmp_path):
    out, _ = run
    base = ["dlp", "train", "--out", str(tmp_path / "x"), "--n-train", "10", "--n-val", "2"]
    cases = [
        (base, "--minutes or --steps"),
        (base + ["--steps", "2", "-o", "width=3"], "'width' is not a model field"),
        (base + ["--steps", "2", "-o", "d"], "expected KEY=VALUE"),
        (base + ["--steps", "2", "--model", "dlp-huge"], "unknown dlp preset 'dlp-huge'"),
        (base + ["--steps", "2", "-o", "n_heads=5", "--model", "dlp-small"], "d / n_heads must be even"),
        (base + ["--steps", "2", "--train", str(tmp_path / "t.jsonl")], "give both --train and --val"),
        (base + ["--steps", "2", "--train", str(tmp_path / "t.jsonl"), "--val", str(tmp_path / "v.jsonl")],
         "t.jsonl: file not found"),
        (["dlp", "calibrate", str(tmp_path)], "model.safetensors: file not found"),
    ]  # fmt: skip
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code != 0 and msg in r.output, (args, r.output)
        assert "Traceback" not in r.output
