"""`chinwag quickstart`: the whole pipeline on real data, in one command and a fixed time budget.

chitchat conversations -> clean/dedup/split -> BPE tokenizer -> token files -> pretrain `small` on the
conversations as plain text -> SFT on them as chats -> held-out perplexity and five sample replies.
Every stage is the same Python API the individual `chinwag` subcommands call, so this file doubles as
a readable recipe.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

PROMPTS = [
    "hi! how are you doing today?",
    "what did you do this weekend?",
    "do you have any pets?",
    "what kind of music do you like?",
    "i'm so tired of studying for finals.",
]

# Share of the training budget: pretraining learns the language, SFT the turn-taking format.
PRETRAIN_SHARE = 0.7


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Folder for the data, tokenizer and both runs."),
    minutes: float = typer.Option(15.0, help="Total time budget (data + tokenizer + training + samples)."),
    preset: str = typer.Option("small", help="Model preset (see `chinwag model list`)."),
    vocab_size: int = typer.Option(8192, help="BPE vocabulary size."),
    seq_len: int = typer.Option(256, help="Training window in tokens."),
    dtype: str = typer.Option("bf16", help="fp32 | bf16 (bf16 autocast is ~3x faster on AVX-512 CPUs)."),
    threads: int = typer.Option(None, help="torch threads (default: all cores)."),
    seed: int = typer.Option(0, help="Seed for the split, the tokenizer sample order, init and sampling."),
) -> None:
    import torch
    from rich.console import Console

    from chinwag.data import iter_texts, prepare
    from chinwag.generate.cli import ChatSession
    from chinwag.generate.sampling import SamplingParams
    from chinwag.tokenizer import train_bpe
    from chinwag.train.config import TrainConfig
    from chinwag.train.trainer import train

    con = Console()
    t0 = time.time()
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "pretrain", out / "sft"):
        # the trainer refuses to start a fresh run over old checkpoints; these are ours to replace
        if (old / "train_config.json").exists():
            con.print(f"[dim]replacing the previous quickstart run in {old}[/dim]")
            shutil.rmtree(old)

    def step(title: str) -> None:
        con.rule(f"[bold]{title}[/bold]  [dim](t={time.time() - t0:.0f}s)[/dim]")

    step("1/6 data: chitchat -> clean, dedup, split")
    clean_dir = out / "data" / "clean"
    rep = prepare("chitchat", clean_dir, val_fraction=0.02, seed=seed)
    con.print(
        f"read {rep['read_total']:,} conversations, kept {rep['kept']:,} "
        f"(filtered {rep['filtered_total']:,}, duplicates {rep['deduplicated_total']:,})"
    )

    step(f"2/6 tokenizer: byte-level BPE, vocab {vocab_size}")
    tok = train_bpe(iter_texts(clean_dir), vocab_size=vocab_size)
    tok.save(out / "tokenizer.json")
    val_text = "\n".join(iter_texts(clean_dir, split="val"))
    con.print(
        f"vocab {tok.vocab_size:,}; {len(tok.encode(val_text)) / max(1, len(val_text)):.3f} tokens/char "
        "on the val split"
    )

    step("3/6 token files: packed text for pretraining, chat template for SFT")
    pre_dir, sft_dir = out / "data" / "pretrain", out / "data" / "sft"
    for mode, folder in (("pretrain", pre_dir), ("sft", sft_dir)):
        r = prepare(clean_dir, folder, tokenizer=tok, mode=mode, val_fraction=0.02, seed=seed)
        con.print(
            f"{mode}: {r['splits']['train']['tokens']:,} train / {r['splits']['val']['tokens']:,} val tokens"
        )

    # what is left, minus a minute for the closing evaluation and samples
    left = minutes * 60 - (time.time() - t0) - 60
    if left < 60:
        con.print(
            f"[red]error:[/red] --minutes {minutes} leaves no time to train; give it at least "
            f"{(time.time() - t0 + 120) / 60:.0f}"
        )
        raise typer.Exit(1)
    common = dict(
        preset=preset,
        seq_len=seq_len,
        dtype=dtype,
        seed=seed,
        threads=threads,
        batch_size=16,
        eval_batches=10,
        log_every=10,
    )

    step(f"4/6 pretrain `{preset}` for {PRETRAIN_SHARE * left / 60:.1f} min")
    pre = train(
        TrainConfig(
            mode="pretrain",
            data=str(pre_dir),
            out=str(out / "pretrain"),
            lr=2e-3,
            warmup_steps=30,
            max_minutes=PRETRAIN_SHARE * left / 60,
            eval_every=100,
            save_every=200,
            **common,
        )
    )
    con.print(
        f"pretrain: {pre['final_step']} steps, {pre['tokens_seen']:,} tokens, "
        f"val ppl {pre['best_val_ppl']:.2f} ({pre['stopped_reason']})"
    )

    step(f"5/6 SFT on chats for {(1 - PRETRAIN_SHARE) * left / 60:.1f} min")
    left = minutes * 60 - (time.time() - t0) - 60
    sft = train(
        TrainConfig(
            mode="sft",
            data=str(sft_dir),
            out=str(out / "sft"),
            init_from=str(out / "pretrain"),
            lr=5e-4,
            warmup_steps=10,
            max_minutes=max(0.5, left / 60),
            eval_every=50,
            save_every=100,
            **common,
        )
    )
    con.print(
        f"SFT: {sft['final_step']} steps; held-out val loss {sft['best_val_loss']:.3f}, "
        f"[bold]perplexity {sft['best_val_ppl']:.2f}[/bold], {sft['best_val_bpb']:.3f} bits/byte, "
        f"token accuracy {sft['best_val_acc']:.1%}"
    )

    step("6/6 samples (fixed prompts, temperature 0.7, seeded)")
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.95, max_new_tokens=48, seed=seed)
    session = ChatSession(out / "sft", params=params, threads=threads)
    for p in PROMPTS:
        session.reset()
        con.print(f"[cyan]user>[/cyan] {p}\n[green]bot>[/green]  {session.reply(p)}")

    con.rule(f"done in {(time.time() - t0) / 60:.1f} min")
    con.print(
        f"Chat with it:   [bold].venv/bin/chinwag chat {out / 'sft'}[/bold]\n"
        f"Plot the run:   .venv/bin/chinwag plot {out / 'sft'}\n"
        f"Export to HF:   .venv/bin/chinwag export hf {out / 'sft'} {out / 'hf'}"
    )
