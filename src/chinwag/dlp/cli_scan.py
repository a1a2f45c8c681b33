"""`chinwag dlp scan` and `chinwag dlp eval` (issue 8). torch and the model are imported inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

MODEL_HELP = "Run folder: model.safetensors, config.json, tokenizer.json, optional calib.json."


def _fail(msg: str) -> None:
    from chinwag.dlp.cli import _fail as fail  # one error style for every `chinwag dlp` command

    fail(msg)


def _load_scanner(model: Path, threads: int, **overrides):
    import torch

    from chinwag.dlp.scan import ScanError, Scanner

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return Scanner.load(model, **{k: v for k, v in overrides.items() if v is not None})
    except ScanError as e:
        _fail(str(e))


def _read_input(path: str):
    """Documents from a JSONL file or `-` (stdin). Keys outside the document schema (e.g. the gold `spans`
    of a synth file) are ignored; a missing id becomes the line number."""
    from chinwag.dlp.dsl import Document, DocumentError

    name = "<stdin>" if path == "-" else path
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        p = Path(path)
        if not p.is_file():
            _fail(f"{path}: file not found")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"{path}: cannot read ({e})")
    keep = set(Document.__dataclass_fields__)
    docs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(f"{name}:{lineno}: invalid JSON ({e.msg})")
        if not isinstance(rec, dict):
            _fail(f"{name}:{lineno}: expected a JSON object (one document per line)")
        try:
            doc = Document.from_dict({k: v for k, v in rec.items() if k in keep})
        except DocumentError as e:
            _fail(f"{name}:{lineno}: {e}")
        if doc.id is None:
            doc.id = str(lineno)
        docs.append(doc)
    return docs


def scan(
    input: str = typer.Option(..., "--input", "-i", help="JSONL, one document per line (`-` = stdin)."),
    output: str = typer.Option("-", "--output", "-o", help="JSONL of results, one per line (`-` = stdout)."),
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    threads: int = typer.Option(1, min=0, help="torch threads (0 = torch's default)."),
    window: int = typer.Option(None, min=2, help="Tokens per window (default: the run's max_len, else 512)."),
    no_validators: bool = typer.Option(
        False, "--no-validators", help="Keep spans the exact validators veto."
    ),
):
    """Scan documents: spans (field, code-point start/end, label), calibrated scores, decision, rationale.

    Each output line is {"id", "spans", "scores": {sensitivity, exposure, context, obfuscation}, "decision",
    "rationale", "latency_ms"}; latency is the wall time of that one document (tokenize + model + policy).
    """
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chinwag.dlp.scan import to_result
    from chinwag.utils import atomic_path

    docs = _read_input(input)
    if not docs:
        _fail(f"{input}: no documents")
    scanner = _load_scanner(model, threads, window=window, validate=False if no_validators else None)
    err = Console(stderr=True)
    cols = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

    def run(f):
        with Progress(*cols, console=err, transient=True, disable=len(docs) < 2) as bar:
            task = bar.add_task("scan", total=len(docs))
            for doc in docs:
                t0 = time.perf_counter()
                pred = scanner.predict([doc])[0]
                res = to_result(doc, pred, (time.perf_counter() - t0) * 1000.0)
                f.write(json.dumps(res, ensure_ascii=False) + "\n")
                bar.advance(task)

    if output == "-":
        run(sys.stdout)
        sys.stdout.flush()
    else:
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            run(f)
        err.print(f"scanned {len(docs)} documents -> {output}", highlight=False)


def eval_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: Path = typer.Option(..., help="Labelled JSONL from `chinwag dlp synth` (documents + gold spans)."),
    json_out: Path = typer.Option(None, "--json", help="Also write every table as JSON (atomic)."),
    limit: int = typer.Option(None, min=1, help="Evaluate only the first N documents."),
    probe_n: int = typer.Option(
        200, min=0, help="Documents re-scanned for the shift and gate probes (0 = skip)."
    ),
    shift_tokens: int = typer.Option(200, min=1, help="Tokens of neutral prose for the stability shifts."),
    batch_size: int = typer.Option(8, min=1, help="Windows per forward pass."),
    threads: int = typer.Option(1, min=0, help="torch threads (0 = torch's default)."),
    window: int = typer.Option(None, min=2, help="Tokens per window (default: the run's max_len, else 512)."),
    no_validators: bool = typer.Option(
        False, "--no-validators", help="Score spans without validator vetoes."
    ),
    seed: int = typer.Option(0, help="Seed of the neutral prose used by the shift probe."),
):
    """Evaluate a run on a labelled test file: span P/R/F1 per label (exact, overlap), recall per
    obfuscation form, FP per 100 hard negatives, per-head AUPRC / FPR@95%R / ECE, the decision confusion
    matrix, decision stability under ±200-token shifts and the gate ablation."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chinwag.dlp.evaluate import EvalDataError, evaluate_model, jsonable, read_examples, render
    from chinwag.utils import seed_everything, write_json

    seed_everything(seed)
    try:
        examples = read_examples(data, limit)
    except EvalDataError as e:
        _fail(str(e))
    scanner = _load_scanner(model, threads, window=window, batch_size=batch_size,
                            validate=False if no_validators else None)  # fmt: skip
    console = Console()
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        tasks: dict = {}

        def progress(stage: str, done: int, total: int):
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        report = evaluate_model(scanner, examples, probe_n=probe_n, seed=seed, shift_tokens=shift_tokens,
                                progress=progress)  # fmt: skip
    report["model"], report["data"] = str(model), str(data)
    render(report, console)
    s = report["seconds"]
    console.print(f"{len(examples)} documents scanned in {s['scan']:.1f}s ({s['docs_per_s']:.1f} docs/s); "
                  f"total {s['total']:.1f}s", highlight=False)  # fmt: skip
    if json_out:
        write_json(json_out, jsonable(report))
        console.print(f"tables -> {json_out}", highlight=False)


def register(app) -> None:
    app.command("scan")(scan)
    app.command("eval")(eval_cmd)
