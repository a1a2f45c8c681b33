"""`chinwag plot RUN`: PNG plots of a run's metrics (mounted as a top-level command)."""

from __future__ import annotations

import typer


def plot(
    run: str = typer.Argument(..., help="Run folder (or its metrics.jsonl)."),
    out: str = typer.Option(None, "--out", help="Folder for the PNGs [default: RUN/plots]."),
) -> None:
    """Write loss (train + val), lr, throughput and grad-norm PNGs from RUN/metrics.jsonl."""
    from chinwag.inspect.plot import MetricsError, plot_run

    try:
        paths = plot_run(run, out)
    except MetricsError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    for p in paths:
        typer.echo(str(p))
