"""`chinwag data prepare | stats`."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = "Input format: auto|messages|sharegpt|pairs|text|chatterbot|chitchat|prepared."


def _fail(msg: str) -> None:
    from rich.console import Console
    from rich.text import Text

    # Text, not markup: messages quote user data that may contain [brackets]
    Console(stderr=True, soft_wrap=True).print(Text("error: ", style="bold red") + Text(msg), highlight=False)
    raise typer.Exit(1)


@app.command(help="Read, clean, dedup and split SRC into OUT (JSONL); with --tokenizer also token files.")
def prepare(
    source: str = typer.Option(
        ..., "--source", "-s", help="chitchat, chatterbot, a file, a folder, or a prepared folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; files replaced atomically)."),
    tokenizer: str = typer.Option(
        None, "--tokenizer", "-t", help="Tokenizer JSON path or pretrained name (cl100k_base)."
    ),
    mode: str = typer.Option("sft", help="sft: chat template + loss mask; pretrain: plain text + <|eos|>."),
    val_fraction: float = typer.Option(0.01, help="Share of conversations (by id hash) for validation."),
    val_source: str = typer.Option(None, help="A separate validation source instead of a split."),
    seed: int = typer.Option(0, help="Seeds the split hash and MinHash."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    on_error: str = typer.Option(
        "fail", help="Malformed records: fail (report all, then stop) or skip (count)."
    ),
    min_chars: int = typer.Option(1, help="Minimum characters per message."),
    max_message_chars: int = typer.Option(8000, help="Maximum characters per chat message."),
    min_conversation_chars: int = typer.Option(2, help="Minimum characters per conversation."),
    max_conversation_chars: int = typer.Option(200_000, help="Maximum characters per conversation."),
    max_document_chars: int = typer.Option(20_000_000, help="Maximum characters per plain-text document."),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep duplicates."),
    near_dup_threshold: float = typer.Option(0.85, help="MinHash Jaccard threshold for near duplicates."),
    no_near_dup: bool = typer.Option(
        False, "--no-near-dup", help="Exact dedup only (faster on huge corpora)."
    ),
) -> None:
    from rich.console import Console

    from chinwag.data.clean import CleanConfig
    from chinwag.data.prepare import prepare as run_prepare
    from chinwag.data.schema import DataError

    if mode not in ("sft", "pretrain"):
        raise typer.BadParameter(f"--mode must be sft or pretrain, got {mode!r}")
    if on_error not in ("fail", "skip"):
        raise typer.BadParameter(f"--on-error must be fail or skip, got {on_error!r}")
    cfg = CleanConfig(
        min_message_chars=min_chars,
        max_message_chars=max_message_chars,
        min_conversation_chars=min_conversation_chars,
        max_conversation_chars=max_conversation_chars,
        max_document_chars=max_document_chars,
    )
    try:
        report = run_prepare(
            source, out, tokenizer=tokenizer, mode=mode, val_fraction=val_fraction, seed=seed, fmt=fmt,
            on_error=on_error, val_source=val_source, clean=cfg, dedup=not no_dedup,
            near_dup=not no_near_dup, near_dup_threshold=near_dup_threshold,
        )  # fmt: skip
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console = Console()
    console.print(_report_table(report, out))
    if tokenizer is None:
        console.print(
            f"Next: train a tokenizer on it: [bold]chinwag tokenizer train --data {out}[/bold], then "
            f"re-run with [bold]--tokenizer[/bold] to write token files (or use --tokenizer cl100k_base)."
        )
    else:
        console.print(
            f"Next: [bold]chinwag train {mode} --data {out}[/bold]  (inspect: chinwag data stats {out})"
        )


def _report_table(report: dict, out: Path):
    from rich.table import Table

    t = Table(title=f"prepared {report['source']} -> {out}  ({report['seconds']} s)", show_header=True)
    t.add_column("stage")
    t.add_column("count", justify="right")
    t.add_row("read", f"{report['read_total']:,}")
    t.add_row("skipped (malformed)", f"{report['skipped_malformed_total']:,}")
    for k, v in report["skipped_malformed"].items():
        t.add_row(f"  {k}", f"{v:,}")
    t.add_row("filtered", f"{report['filtered_total']:,}")
    for k, v in report["filtered"].items():
        t.add_row(f"  {k}", f"{v:,}")
    t.add_row("deduplicated", f"{report['deduplicated_total']:,}")
    for k, v in report["deduplicated"].items():
        t.add_row(f"  {k}", f"{v:,}")
    t.add_row("kept", f"{report['kept']:,}")
    for split, s in report["splits"].items():
        extra = f", {s['tokens']:,} tokens ({s['supervised_tokens']:,} with loss)" if "tokens" in s else ""
        t.add_row(f"  {split}", f"{s['conversations']:,} conv, {s['messages']:,} msg{extra}")
    return t


@app.command(help="Statistics of a prepared folder or any source: counts, turns, token lengths, coverage.")
def stats(
    source: str = typer.Argument(..., help="A prepared folder, or chitchat, chatterbot, a file or folder."),
    tokenizer: str = typer.Option(
        None, "--tokenizer", "-t", help="Tokenizer for token stats of a raw source."
    ),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    limit: int = typer.Option(None, help="Only look at the first N records of a raw source."),
) -> None:
    from rich.console import Console
    from rich.table import Table

    from chinwag.data.schema import DataError
    from chinwag.data.stats import compute_stats

    try:
        s = compute_stats(source, tokenizer=tokenizer, fmt=fmt, max_records=limit)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console = Console()
    t = Table(title=f"{source}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("conversations", f"{s['conversations']:,}")
    t.add_row("messages", f"{s['messages']:,}  " + ", ".join(f"{k} {v:,}" for k, v in s["roles"].items()))
    tr = s["turns"]
    t.add_row("turns / conversation", f"mean {tr['mean']:.1f}  median {tr['median']:.0f}  max {tr['max']}")
    ch = s["chars"]
    t.add_row("chars / conversation", f"mean {ch['mean']:.0f}  median {ch['median']:.0f}  max {ch['max']:,}")
    if s["malformed_skipped"]:
        t.add_row("malformed (skipped)", f"{s['malformed_skipped']:,}")
    if "tokens" in s:
        tk = s["tokens"]
        t.add_row(
            "tokens",
            f"{tk['total']:,}  (mean {tk['mean']:.0f}, median {tk['median']:.0f}, max {tk['max']:,})",
        )
        v = s["vocab"]
        t.add_row("vocab coverage", f"{v['coverage']:.1%}  ({v['used']:,} of {v['size']:,} ids used)")
    if "report" in s:
        r = s["report"]
        t.add_row("read / kept", f"{r['read_total']:,} / {r['kept']:,}")
        t.add_row("malformed", f"{r['skipped_malformed_total']:,}")
        t.add_row("filtered", ", ".join(f"{k} {v:,}" for k, v in r["filtered"].items()) or "0")
        t.add_row("deduplicated", ", ".join(f"{k} {v:,}" for k, v in r["deduplicated"].items()))
        for split, sp in r["splits"].items():
            t.add_row(f"split {split}", f"{sp['conversations']:,} conversations")
    console.print(t)
    if "tokens" in s and s["tokens"]["histogram"]:
        hist = s["tokens"]["histogram"]
        top = max(c for _, _, c in hist) or 1
        h = Table(title="tokens per example", show_header=True)
        h.add_column("tokens", justify="right")
        h.add_column("count", justify="right")
        h.add_column("")
        for lo, hi, c in hist:
            h.add_row(f"{lo}-{hi - 1}", f"{c:,}", "█" * round(40 * c / top))
        console.print(h)
    elif "tokens" not in s:
        console.print("(pass --tokenizer for token-length and vocab-coverage stats)")
