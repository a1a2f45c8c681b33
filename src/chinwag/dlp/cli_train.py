"""`chinwag dlp train` and `chinwag dlp calibrate` (issue 8). Heavy imports live inside the commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def _fail(msg: str) -> None:
    from chinwag.dlp.cli import _fail as fail

    fail(msg)


def _parse_overrides(items: list[str]) -> dict:
    """["d=128", "n_layers=4", "gates=false"] -> {"d": 128, "n_layers": 4, "gates": False} (JSON values)."""
    from dataclasses import fields

    from chinwag.dlp.model import DLPConfig

    known = {f.name for f in fields(DLPConfig)} - {"vocab_size", "extra"}
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--override")
        if key not in known:
            raise typer.BadParameter(
                f"{key!r} is not a model field (choose from {', '.join(sorted(known))})",
                param_hint="--override",
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _load_examples(
    path: Path | None, n: int, seed: int, split: str, what: str, difficulty: str | None = None
):
    """Examples from a synth JSONL file, else `n` freshly generated ones (seeded)."""
    from rich.console import Console

    from chinwag.dlp import synth
    from chinwag.dlp.train import read_examples

    if path is not None:
        try:
            return read_examples(path)
        except ValueError as e:
            _fail(str(e))
    kw = {"difficulty": difficulty} if difficulty else {}
    with Console().status(f"generating {n} {what}"):
        return synth.generate(n, seed=seed, split=split, **kw)


def _has_difficulty_knob() -> bool:
    import inspect

    from chinwag.dlp import synth

    return "difficulty" in inspect.signature(synth.generate).parameters


def _resolve_data(cfg, out: Path):
    """(train, val, phase1 or None) from cfg.data: files, or seeded generation (the same on resume)."""
    d = cfg.data
    path = lambda k: Path(d[k]) if d.get(k) else None  # noqa: E731
    knob = d.get("difficulty_knob", False)
    train = _load_examples(path("train"), d.get("n_train", 0), d["seed"], "train", "train documents",
                           "mixed" if knob else None)  # fmt: skip
    val = _load_examples(path("val"), d.get("n_val", 0), d["seed"], "val", "val documents")
    phase1 = None
    if cfg.phase1_frac > 0 and knob and not d.get("train"):
        n1 = max(1, math.ceil(d["n_train"] * cfg.phase1_frac))
        phase1 = _load_examples(None, n1, d["seed"], "train", "easy documents", "easy")
    return train, val, phase1


def train(
    out: Path = typer.Option(..., help="Run folder to create (or continue with --resume)."),
    train_file: Path | None = typer.Option(None, "--train", help="Training JSONL from `chinwag dlp synth`."),
    val_file: Path | None = typer.Option(None, "--val", help="Validation JSONL (evals and calibration)."),
    n_train: int = typer.Option(20000, min=1, help="Without --train: generate this many training documents."),
    n_val: int = typer.Option(300, min=1, help="Without --val: generate this many val documents."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer file; default: train one on the train docs."),
    vocab_size: int = typer.Option(
        8000, min=300, help="Vocabulary of the tokenizer trained without --tokenizer."
    ),
    model: str = typer.Option("dlp-small", help="Model preset (dlp-tiny, dlp-small, dlp-medium, dlp-base)."),
    override: list[str] = typer.Option([], "--override", "-o", help="Model field KEY=VALUE (repeatable)."),
    minutes: float | None = typer.Option(
        None,
        min=0.01,
        help="Training-time budget (steps only, not evals); without --steps the schedule "
        "(cosine, curriculum switch) follows it; with --steps, a hard stop.",
    ),
    steps: int | None = typer.Option(
        None, min=1, help="Optimizer steps (schedule by steps: bit-exact resume)."
    ),
    tokens_per_step: int = typer.Option(4096, min=64, help="Real tokens per optimizer step (accumulation)."),
    batch_size: int = typer.Option(16, min=1, help="Most documents per micro-batch."),
    micro_tokens: int = typer.Option(8192, min=64, help="Most padded tokens per micro-batch."),
    max_len: int = typer.Option(1024, min=64, help="Window of the main phase, evals, calibration and scan."),
    phase1_max_len: int = typer.Option(512, min=64, help="Window of curriculum phase 1 (easy documents)."),
    phase1_frac: float = typer.Option(0.2, min=0.0, max=0.99, help="Share of steps in phase 1; 0 = none."),
    segment_len: int = typer.Option(256, min=1, help="Segment length (multiple of pool_every)."),
    lr: float = typer.Option(3e-4, min=0.0, help="Peak learning rate (AdamW 0.9/0.95, wd 0.02, cosine)."),
    warmup: int = typer.Option(30, min=0, help="Warmup steps."),
    aux_frac: float = typer.Option(0.25, min=0.0, max=0.99, help="Share of documents used for aux losses."),
    bf16: bool = typer.Option(True, "--bf16/--fp32", help="bf16 autocast (about 2x faster on this CPU)."),
    eval_every: int = typer.Option(250, min=1, help="Evaluate on val every N steps."),
    ckpt_every: int = typer.Option(250, min=0, help="Checkpoint every N steps (0 = only at the end)."),
    threads: int = typer.Option(1, min=1, help="torch threads."),
    seed: int = typer.Option(0, help="Seed for data generation, initialisation and data order."),
    resume: bool = typer.Option(
        False,
        help="Continue the run in --out from its last checkpoint; every "
        "other option is then read from its train_config.json.",
    ),  # fmt: skip
    calibrate: bool = typer.Option(True, help="Fit calib.json on the val documents at the end."),
):
    """Train the DLP scanner: curriculum (easy docs at 512, then all at 1024), BIO + doc + flag losses on
    clean documents, mask-denoise and section-shuffle on auxiliary ones, checkpoints, then calibration."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, track

    from chinwag.dlp.model import DLPConfigError, get_dlp_config
    from chinwag.dlp.tokenizer import DLPTokenizer
    from chinwag.dlp.train import TOKENIZER, DLPTrainConfig, latest_checkpoint, load_train_config, train_dlp

    console = Console()
    torch.set_num_threads(threads)
    if resume:
        try:
            cfg = load_train_config(out)
            if latest_checkpoint(out) is None:
                _fail(f"{out}: no checkpoint to resume from (run without --resume to start)")
            tok = DLPTokenizer.load(out / TOKENIZER)
        except (FileNotFoundError, ValueError, TypeError) as e:
            _fail(str(e))
        train_examples, val_examples, phase1 = _resolve_data(cfg, out)
    else:
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            _fail(f"{out}: already holds a run (checkpoints/); pass --resume or choose another --out")
        if (train_file is None) != (val_file is None):
            raise typer.BadParameter("give both --train and --val, or neither (then both are generated)")
        if minutes is None and steps is None:
            raise typer.BadParameter("give --minutes or --steps (or both: --minutes is then a hard stop)")
        overrides = _parse_overrides(override)
        try:
            get_dlp_config(model, **overrides)  # fail early on a bad preset or field value
        except (DLPConfigError, TypeError) as e:
            _fail(str(e))
        data = {
            "train": str(train_file) if train_file else None,
            "val": str(val_file) if val_file else None,
            "n_train": None if train_file else n_train,
            "n_val": None if val_file else n_val,
            "seed": seed,
            "difficulty_knob": train_file is None and _has_difficulty_knob(),
            "tokenizer": str(tokenizer) if tokenizer else f"trained, vocab {vocab_size}",
        }
        cfg = DLPTrainConfig(
            model=model, model_overrides=overrides, max_len=max_len, segment_len=segment_len,
            batch_size=batch_size, tokens_per_step=tokens_per_step, micro_tokens=micro_tokens, steps=steps,
            max_seconds=minutes * 60 if minutes else None, lr=lr, warmup=warmup, aux_frac=aux_frac,
            phase1_frac=phase1_frac, phase1_max_len=phase1_max_len, bf16=bf16, eval_every=eval_every,
            ckpt_every=ckpt_every, seed=seed, out_dir=str(out), data=data,
        )  # fmt: skip
        try:
            cfg.validate()
        except ValueError as e:
            _fail(str(e))
        train_examples, val_examples, phase1 = _resolve_data(cfg, out)
        if tokenizer is not None:
            try:
                tok = DLPTokenizer.load(tokenizer)
            except (FileNotFoundError, ValueError) as e:
                _fail(str(e))
        else:
            from chinwag.dlp.dsl import serialize

            texts = [serialize(e.doc).text for e in train_examples[:8000]]
            with console.status(f"training a {vocab_size}-piece tokenizer on {len(texts)} documents"):
                try:
                    tok = DLPTokenizer.train(texts, vocab_size=vocab_size, seed=seed, general=0.5)
                except (RuntimeError, ValueError) as e:
                    _fail(f"tokenizer training failed: {str(e).strip().splitlines()[-1]}")

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console,
    )  # fmt: skip

    def tracked(items):
        return track(items, description="tokenizing", transient=True, console=console)

    with progress:
        task = progress.add_task("training", total=100, info="")

        def on_step(info: dict) -> None:
            f1 = "" if info["val_span_f1"] is None else f" val span F1 {info['val_span_f1']:.3f}"
            of = f"/{info['steps']}" if info["steps"] else ""
            text = (f"step {info['step']}{of} phase {info['phase']} loss {info['loss']:.3f} "
                    f"{info['tokens_per_s']:.0f} tok/s{f1}")  # fmt: skip
            progress.update(task, completed=round(100 * info["progress"], 1), info=text)

        try:
            res = train_dlp(cfg, train_examples, val_examples, tok, phase1, resume=resume, callback=on_step,
                            progress=tracked)  # fmt: skip
        except (ValueError, DLPConfigError) as e:
            _fail(str(e).splitlines()[0])
    final = res["final"]
    console.print(
        f"{res['steps']} steps, {res['train_seconds'] / 60:.1f} min of training at {res['tokens_per_s']:.0f} "
        f"tokens/s; val span P/R/F1 {final['span_p']:.3f}/{final['span_r']:.3f}/{final['span_f1']:.3f}"
        f" -> {out}"
    )
    console.print(
        "per label F1: "
        + ", ".join(f"{k} {v['f1']:.2f}" for k, v in final["per_label"].items() if v["support"])
    )
    if calibrate:
        _calibrate(out, val_examples, console)


def _calibrate(run_dir: Path, val_examples, console) -> None:
    from rich.progress import track
    from rich.table import Table

    from chinwag.dlp.calibrate import CALIB, calibrate_run

    res = calibrate_run(
        run_dir, val_examples, progress=lambda xs: track(xs, description="tokenizing val", transient=True)
    )
    table = Table(title=f"temperature scaling on {res['n']} val documents -> {run_dir / CALIB}")
    for col in ("head", "positives", "T", "ECE before", "ECE after", "NLL before", "NLL after"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for h, T in res["temperature"].items():
        nums = [res[k][h] for k in ("ece_before", "ece_after", "nll_before", "nll_after")]
        table.add_row(h, str(res["positives"][h]), f"{T:.3f}", *(f"{x:.4f}" for x in nums))
    console.print(table)
    for h, note in res["notes"].items():
        console.print(f"[yellow]{h}: {note}[/yellow]")


def calibrate(
    run_dir: Path = typer.Argument(..., help="Run folder written by `chinwag dlp train`."),
    val_file: Path | None = typer.Option(None, "--val", help="Validation JSONL from `chinwag dlp synth`."),
    n_val: int = typer.Option(300, min=1, help="Without --val: generate this many val documents."),
    seed: int = typer.Option(0, help="Without --val: generator seed."),
    threads: int = typer.Option(1, min=1, help="torch threads."),
):
    """Fit one temperature per doc head on val documents (NLL); write calib.json with ECE before/after."""
    import torch
    from rich.console import Console

    from chinwag.dlp.model import DLPConfigError
    from chinwag.dlp.train import CONFIG, TOKENIZER, TRAIN_CONFIG, WEIGHTS

    torch.set_num_threads(threads)
    for name in (WEIGHTS, CONFIG, TOKENIZER, TRAIN_CONFIG):
        if not (run_dir / name).is_file():
            _fail(f"{run_dir / name}: file not found (is {run_dir} a DLP run folder?)")
    val_examples = _load_examples(val_file, n_val, seed, "val", "val documents")
    try:
        _calibrate(run_dir, val_examples, Console())
    except (ValueError, DLPConfigError, FileNotFoundError) as e:
        _fail(str(e).splitlines()[0])


def register(app) -> None:
    app.command()(train)
    app.command()(calibrate)
