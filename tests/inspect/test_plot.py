"""`chinwag plot`: four PNGs from metrics.jsonl, and a file:line error on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chinwag.cli import app
from chinwag.inspect.plot import PLOTS, MetricsError, plot_run, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _write_metrics(run, n=12):
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, n + 1):
        lines.append(
            {
                "step": s,
                "tokens": 64 * s,
                "loss": 5.0 / s,
                "lr": 1e-3 * min(1, s / 3),
                "grad_norm": 1.0 + s,
                "tokens_per_s": 1000.0 + s,
                "elapsed_s": 0.1 * s,
            }
        )
        if s % 4 == 0:
            lines.append(
                {
                    "step": s,
                    "tokens": 64 * s,
                    "val_loss": 5.5 / s,
                    "val_ppl": 2.0,
                    "val_bpb": 1.0,
                    "val_acc": 0.1,
                }
            )
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_plot_writes_four_pngs(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run)
    train, evals = read_metrics(run)
    assert len(train) == 12 and len(evals) == 3
    paths = plot_run(run)
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in PLOTS)
    for p in paths:
        assert p.parent == run / "plots" and p.read_bytes().startswith(PNG) and p.stat().st_size > 1000


def test_plot_cli(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run)
    r = CliRunner().invoke(app, ["plot", str(run), "--out", str(tmp_path / "pngs")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 4


def test_plot_errors_name_file_and_line(tmp_path):
    with pytest.raises(MetricsError, match="not found"):
        read_metrics(tmp_path / "missing")
    run = tmp_path / "run"
    _write_metrics(run, n=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "loss": \n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:4: not valid JSON"):
        read_metrics(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": "x", "loss": 2}\n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:2: .*integer 'step'"):
        read_metrics(run)
    r = CliRunner().invoke(app, ["plot", str(run)])
    assert r.exit_code == 1 and "metrics.jsonl:2" in r.output and "Traceback" not in r.output


def test_alignment_metrics_get_one_png_per_group(tmp_path):
    import json

    from chinwag.inspect.plot import plot_run

    run = tmp_path / "rl"
    run.mkdir()
    lines = [{"step": i, "loss": 1.0 / (i + 1), "objective/kl": 0.1 * i, "objective/scores": 0.2 * i,
              "policy/clipfrac": 0.05, "flag": True} for i in range(1, 6)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    written = {p.name for p in plot_run(run)}
    assert {"loss.png", "objective.png", "policy.png"} <= written
    assert (run / "plots" / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
