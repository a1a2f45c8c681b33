"""The single `chinwag` command. Each subcommand group lives beside the module it drives.

Sub-apps import their heavy dependencies (torch, tokenizers) inside the command functions, so
`chinwag --help` stays instant.
"""

from __future__ import annotations

import typer

from chinwag.align.cli import app as align_app
from chinwag.data.cli import app as data_app
from chinwag.dlp.cli import app as dlp_app
from chinwag.export.cli import app as export_app
from chinwag.generate.cli import chat, generate_cmd
from chinwag.inspect.cli import plot
from chinwag.model.cli import app as model_app
from chinwag.quickstart import quickstart
from chinwag.safety.cli import app as guard_app
from chinwag.serve.cli import serve
from chinwag.serve.store_cli import app as conversations_app
from chinwag.tokenizer.cli import app as tokenizer_app
from chinwag.train.cli import app as train_app

app = typer.Typer(
    help="chinwag: raw conversations -> tokenizer -> model -> trained, served chat model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_app, name="data", help="Read, clean, split and tokenize conversation corpora.")
app.add_typer(tokenizer_app, name="tokenizer", help="Train, inspect and run byte-level BPE tokenizers.")
app.add_typer(model_app, name="model", help="Model presets, sizes and memory estimates.")
app.add_typer(train_app, name="train", help="Pretrain or fine-tune (SFT) a model.")
app.add_typer(align_app, name="align", help="Align a model: reward model, DPO, PPO, GRPO/RLOO/REINFORCE.")
app.add_typer(guard_app, name="guard", help="Safety guard: check messages, evaluate, train the classifier.")
app.add_typer(dlp_app, name="dlp", help="Data-loss prevention: synthetic corpus, tokenizer, scanner.")
app.add_typer(export_app, name="export", help="Export a run to other ecosystems (Hugging Face).")
app.command(help="Chat with a trained run (interactive, or one shot with --prompt).")(chat)
app.command(name="generate", help="Generate for a JSONL file of prompts (batched), JSONL out.")(generate_cmd)
app.command(help="Plot a run's metrics (loss, lr, throughput, grad-norm) to PNG files.")(plot)
app.command(help="Serve a run over an OpenAI-compatible HTTP API, WebSocket and a web chat page.")(serve)
app.add_typer(conversations_app, name="conversations", help="List, show and export stored conversations.")
app.command(help="The end-to-end demo: data -> tokenizer -> pretrain -> SFT -> samples.")(quickstart)


if __name__ == "__main__":
    app()
