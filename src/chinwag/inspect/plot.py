"""Plot a run's `metrics.jsonl`: loss (train + val), learning rate, throughput and gradient norm PNGs,
plus one PNG per group of alignment metrics (`objective/kl`, `objective/scores`, `rewards/margins`, ...:
TRL-style names, grouped by the part before the slash) when the run logged them."""

from __future__ import annotations

import json
from pathlib import Path

PLOTS = ("loss", "lr", "throughput", "grad_norm")


class MetricsError(ValueError):
    """A missing or malformed metrics file; the message names file:line."""


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Split metrics.jsonl into (train lines, eval lines); MetricsError names file:line on bad input."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise MetricsError(f"{path}: metrics file not found (has the run logged a step yet?)")
    train, evals = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise MetricsError(f"{path}:{n}: expected an object with an integer 'step'")
        if "val_loss" in rec:
            evals.append(rec)
        elif "loss" in rec:
            train.append(rec)
        else:
            raise MetricsError(f"{path}:{n}: neither a train line ('loss') nor an eval line ('val_loss')")
    if not train and not evals:
        raise MetricsError(f"{path}: no metrics lines")
    return train, evals


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write loss.png, lr.png, throughput.png, grad_norm.png into `out` (default RUN/plots). Returns paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from chinwag.utils import atomic_path

    run = Path(run)
    train, evals = read_metrics(run)
    out = Path(out) if out else (run if run.is_dir() else run.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    def series(rows, key):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    specs = {
        "loss": ("loss (nats/token)", [("train", train, "loss"), ("val", evals, "val_loss")], True),
        "lr": ("learning rate", [("lr", train, "lr")], False),
        "throughput": ("tokens / s", [("tokens/s", train, "tokens_per_s")], False),
        "grad_norm": ("gradient norm (before clipping)", [("grad norm", train, "grad_norm")], True),
    }
    written = []
    for name, (ylabel, lines, logy) in specs.items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for label, rows, key in lines:
            xs, ys = series(rows, key)
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 20 else None, markersize=3)
        if logy and any(ax.get_lines()) and all(y > 0 for ln in ax.get_lines() for y in ln.get_ydata()):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{run.name}: {name.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    written += _plot_groups(plt, run, train, out, series)
    return written


def _plot_groups(plt, run: Path, train: list[dict], out: Path, series) -> list[Path]:
    """One PNG per metric group ("objective", "policy", "rewards", ...), a small panel per metric."""
    from chinwag.utils import atomic_path

    groups: dict[str, list[str]] = {}
    for r in train:
        for k, v in r.items():
            if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys = groups.setdefault(k.split("/", 1)[0], [])
                if k not in keys:
                    keys.append(k)
    written = []
    for group, keys in sorted(groups.items()):
        cols = min(3, len(keys))
        rows = -(-len(keys) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), dpi=100, squeeze=False)
        for ax, key in zip(axes.flat, keys, strict=False):
            xs, ys = series(train, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.set_visible(False)
        fig.suptitle(f"{run.name}: {group}")
        fig.tight_layout()
        path = out / f"{group.replace(' ', '_')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written
