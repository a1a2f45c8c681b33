"""`chinwag train pretrain|sft`: every TrainConfig field is a flag.

Flags default to "not given" so `--resume` can start from the run's saved `train_config.json` and only
override what you pass (e.g. `--resume --max-steps 4000` extends a run). Heavy imports stay inside.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

_DEFAULTS = {
    "batch_size": 8,
    "min_lr_ratio": 0.1,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "eval_every": 250,
    "eval_batches": 20,
    "save_every": 500,
    "keep_last": 3,
    "log_every": 10,
    "seed": 1337,
    "preset": "tiny",
}  # for help texts only; the source of truth is TrainConfig (a test checks they agree)


def _d(name: str) -> str:
    return f" (default: {_DEFAULTS[name]})"


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise typer.BadParameter(f"--model {text!r}: expected KEY=VALUE, e.g. dropout=0.1")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _build_config(mode: str, opts: dict):
    from chinwag.train.config import TrainConfig

    out = opts["out"]
    given = {k: v for k, v in opts.items() if v is not None and k not in ("model", "betas", "mode")}
    if opts.get("betas"):
        try:
            given["betas"] = tuple(float(x) for x in opts["betas"].split(","))
        except ValueError:
            raise typer.BadParameter(
                f"--betas {opts['betas']!r}: expected two numbers like 0.9,0.95"
            ) from None
    if opts.get("model"):
        given["model_overrides"] = dict(_parse_override(t) for t in opts["model"])
    saved = Path(out) / "train_config.json"
    if opts.get("resume") and saved.is_file():
        base = TrainConfig.load(saved).to_dict()
        if base["mode"] != mode:
            raise typer.BadParameter(f"{saved}: this run is a {base['mode']} run, not {mode}")
        base.update(given)
        return TrainConfig.from_dict(base)
    return TrainConfig(mode=mode, **given)


def _run(mode: str, opts: dict) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    try:
        cfg = _build_config(mode, opts)
        from chinwag.train.trainer import train

        summary = train(cfg)
    except typer.BadParameter:
        raise
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError) as e:
        from rich.markup import escape

        errors.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    run = summary["run_dir"]
    best = summary["best_val_loss"]
    console.print(
        f"[green]done[/green]: {summary['final_step']} steps ({summary['stopped_reason']}), "
        f"{summary['tokens_seen']:,} tokens"
        + (f", best val loss {best:.4f} (bpb {summary['best_val_bpb']:.4f})" if best is not None else ""),
        highlight=False,
    )
    console.print(f"run folder: {run}", highlight=False)
    if summary["stopped_reason"] in ("stop_at_step", "interrupted", "max_minutes"):
        console.print(f"continue:   chinwag train {mode} --out {run} --resume", highlight=False)
    if mode == "pretrain":
        console.print(
            f"next:       chinwag train sft --init-from {run} --data DATA --out runs/NAME", highlight=False
        )
    console.print(f"chat:       chinwag chat {run}", highlight=False)
    console.print(f"plots:      chinwag plot {run}", highlight=False)


def _make_command(mode: str):
    def command(
        data: str = typer.Option(
            None,
            "--data",
            help="Prepared folder (`chinwag data prepare`), or raw text/JSONL (needs --tokenizer).",
        ),
        out: str = typer.Option(..., "--out", help="Run folder, e.g. runs/NAME."),
        val_data: str = typer.Option(
            None, help="Separate validation set (prepared folder, or raw with raw --data)."
        ),
        tokenizer: str = typer.Option(None, help="Tokenizer file or name, to prepare raw --data."),
        val_fraction: float = typer.Option(
            None, help="Validation share when preparing raw data (default: 0.01)."
        ),
        preset: str = typer.Option(None, help="Model preset (`chinwag model presets`)." + _d("preset")),
        model: list[str] = typer.Option(
            None, "--model", "-m", help="Model config override KEY=VALUE (repeatable)."
        ),
        seq_len: int = typer.Option(
            None, help="Training window in tokens (default: the model's max_seq_len)."
        ),
        init_from: str = typer.Option(
            None, help="Start from this run's weights (e.g. SFT on a pretrained run)."
        ),
        seed: int = typer.Option(None, help="Seed for init and data order." + _d("seed")),
        resume: bool = typer.Option(
            None, "--resume", help="Continue from the newest valid checkpoint in --out."
        ),
        device: str = typer.Option(None, help="auto | cpu | cuda | cuda:N (default: auto)."),
        dtype: str = typer.Option(None, help="fp32 | bf16 | fp16 (fp16: CUDA only) (default: fp32)."),
        compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
        threads: int = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
        max_steps: int = typer.Option(None, help="Stop after this many optimizer steps."),
        max_tokens: int = typer.Option(None, help="Stop after this many training tokens."),
        max_minutes: float = typer.Option(
            None, help="Time budget for this invocation; stops cleanly and saves."
        ),
        epochs: float = typer.Option(None, help="Stop after this many passes over the training rows."),
        stop_at_step: int = typer.Option(
            None, help="Pause at this step (save + exit) keeping the full schedule."
        ),
        batch_size: int = typer.Option(None, help="Micro-batch rows per device." + _d("batch_size")),
        tokens_per_step: int = typer.Option(
            None, help="Tokens per optimizer step (sets gradient accumulation)."
        ),
        lr: float = typer.Option(None, help="Peak learning rate (default: 6e-4 pretrain, 1e-4 sft)."),
        min_lr_ratio: float = typer.Option(
            None, help="Cosine floor as a fraction of lr." + _d("min_lr_ratio")
        ),
        warmup_steps: int = typer.Option(None, help="Linear warmup steps." + _d("warmup_steps")),
        weight_decay: float = typer.Option(
            None, help="AdamW weight decay (matrices only)." + _d("weight_decay")
        ),
        betas: str = typer.Option(None, help="AdamW betas (default: 0.9,0.95)."),
        grad_clip: float = typer.Option(None, help="Clip the gradient norm (0: off)." + _d("grad_clip")),
        eval_every: int = typer.Option(None, help="Evaluate every N steps." + _d("eval_every")),
        eval_batches: int = typer.Option(
            None, help="Validation batches per eval (0: off)." + _d("eval_batches")
        ),
        early_stopping_patience: int = typer.Option(None, help="Stop after N evals without improvement."),
        save_every: int = typer.Option(None, help="Checkpoint every N steps." + _d("save_every")),
        keep_last: int = typer.Option(None, help="Step checkpoints to keep (plus best/)." + _d("keep_last")),
        log_every: int = typer.Option(None, help="Write a metrics line every N steps." + _d("log_every")),
        tensorboard: bool = typer.Option(
            None, "--tensorboard", help="Also log to TensorBoard (if installed)."
        ),
        progress: bool = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        _run(mode, dict(locals()))

    return command


app.command(
    "pretrain",
    help="Pretrain a model from scratch on packed documents (next-token loss on every token).\n\n"
    "Example: chinwag train pretrain --data data/pre --out runs/pre --preset small --max-minutes 20",
)(_make_command("pretrain"))
app.command(
    "sft",
    help="Supervised fine-tuning on conversations (loss on assistant tokens only).\n\n"
    "Example: chinwag train sft --data data/chat-sft --init-from runs/pre --out runs/chat --epochs 2",
)(_make_command("sft"))
