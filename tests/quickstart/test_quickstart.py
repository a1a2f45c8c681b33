"""The demo end to end on real data with a small budget (slow: about 3 minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chinwag.cli import app


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_reruns(tmp_path):
    args = [
        "quickstart",
        "--out",
        str(tmp_path / "qs"),
        "--minutes",
        "3",
        "--preset",
        "tiny",
        "--vocab-size",
        "2048",
        "--seq-len",
        "128",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "perplexity" in r.output and r.output.count("bot>") == 5
    summary = json.loads((tmp_path / "qs" / "sft" / "summary.json").read_text())
    assert summary["best_val_ppl"] < 2048  # better than uniform over the vocabulary
    assert (tmp_path / "qs" / "sft" / "model.safetensors").exists()
    # a second run replaces the first instead of refusing to overwrite its checkpoints
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "replacing the previous quickstart run" in r.output


def test_quickstart_refuses_a_budget_with_no_time_to_train(tmp_path, monkeypatch):
    import chinwag.data

    calls = []
    monkeypatch.setattr(
        chinwag.data,
        "prepare",
        lambda *a, **k: (
            calls.append(a)
            or {
                "read_total": 1,
                "kept": 1,
                "filtered_total": 0,
                "deduplicated_total": 0,
                "splits": {"train": {"tokens": 1}, "val": {"tokens": 1}},
            }
        ),
    )
    monkeypatch.setattr(chinwag.data, "iter_texts", lambda *a, **k: iter(["hello there", "hi"]))
    r = CliRunner().invoke(
        app, ["quickstart", "--out", str(tmp_path / "qs"), "--minutes", "0.5", "--vocab-size", "300"]
    )
    assert r.exit_code == 1
    assert "leaves no time to train" in r.output
