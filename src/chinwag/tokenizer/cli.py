"""`chinwag tokenizer ...`: train, encode, decode, info.

`--tokenizer` takes a chinwag tokenizer JSON path (or a folder holding tokenizer.json) or a pretrained
name: cl100k_base, o200k_base.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

TOKENIZER_HELP = "Tokenizer JSON path (or folder with tokenizer.json), or cl100k_base / o200k_base."


def _fail(msg: str) -> None:
    """One clear red line on stderr, exit code 1, no traceback."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(msg)}")
    raise typer.Exit(1)


def _load(spec: str):
    from chinwag.tokenizer.core import Tokenizer, TokenizerFileError

    try:
        return Tokenizer.from_spec(spec)
    except TokenizerFileError as e:
        _fail(f"--tokenizer: {e}")


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="Corpus: chitchat, chatterbot, a file or a folder."),
    vocab_size: int = typer.Option(8192, "--vocab-size", help="Total ids, including the 16 specials."),
    out: Path = typer.Option(..., "--out", help="Where to write the tokenizer JSON."),
    fmt: str = typer.Option(
        "auto", "--format", help="Input format for the data reader (auto, jsonl, txt...)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the sample used to report tokens per character."),
    sample_size: int = typer.Option(2000, "--sample-size", help="Texts kept (reservoir) for the report."),
) -> None:
    """Train a byte-level BPE tokenizer on SOURCE and save it as one JSON file."""
    import random
    import time

    from chinwag.tokenizer.train import train_bpe
    from chinwag.utils import seed_everything

    try:
        from chinwag.data import iter_texts
    except ImportError as e:
        _fail(f"chinwag.data.iter_texts is not available ({e})")
    if vocab_size < 272:
        raise typer.BadParameter("must be >= 272 (256 bytes + 16 specials)", param_hint="--vocab-size")
    seed_everything(seed)
    rng = random.Random(seed)
    sample: list[str] = []
    stats = {"texts": 0, "chars": 0}

    def stream():  # counts the corpus and keeps a uniform reservoir sample while the trainer reads it
        for t in iter_texts(data, fmt=fmt, split="train"):
            stats["texts"] += 1
            stats["chars"] += len(t)
            if len(sample) < sample_size:
                sample.append(t)
            else:
                j = rng.randrange(stats["texts"])
                if j < sample_size:
                    sample[j] = t
            yield t

    t0 = time.perf_counter()
    try:
        tok = train_bpe(stream(), vocab_size=vocab_size, show_progress=True, name=out.stem)
    except (OSError, ValueError) as e:  # chinwag.data.DataError is a ValueError naming file:line
        _fail(str(e))
    elapsed = time.perf_counter() - t0
    if stats["texts"] == 0:
        _fail(f"{data}: no texts found")
    tok.save(out)
    chars = sum(len(t) for t in sample)
    n_tok = sum(len(ids) for ids in tok.encode_batch(sample))
    typer.echo(f"trained on {stats['texts']:,} texts ({stats['chars']:,} chars) in {elapsed:.2f} s")
    typer.echo(f"vocab size: {tok.vocab_size} (of {vocab_size} asked, 16 specials)")
    typer.echo(f"tokens per character on a {len(sample)}-text sample: {n_tok / max(chars, 1):.4f}")
    typer.echo(f"saved {out}")


@app.command()
def encode(
    text: str = typer.Argument(..., help="Text to encode (special-token strings stay plain text)."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help=TOKENIZER_HELP),
) -> None:
    """Print the token ids of TEXT, space-separated."""
    tok = _load(tokenizer)
    typer.echo(" ".join(map(str, tok.encode(text))))


@app.command()
def decode(
    ids: list[int] = typer.Argument(..., help="Token ids to decode."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help=TOKENIZER_HELP),
) -> None:
    """Print the text of token IDS (invalid UTF-8 shown as U+FFFD)."""
    tok = _load(tokenizer)
    try:
        typer.echo(tok.decode(ids))
    except ValueError as e:
        _fail(str(e))


def _show(b: bytes) -> str:
    """A token as a readable string, or as bytes when it is part of a multi-byte character."""
    try:
        return repr(b.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(b)


@app.command()
def info(
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help=TOKENIZER_HELP),
    sample: str = typer.Option(
        "Hello there! How's it going? <|user|> 12345 日本語", "--sample", help="Text to show tokenized."
    ),
) -> None:
    """Show vocab size, special tokens with ids, split pattern and a sample tokenization."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    tok = _load(tokenizer)
    table = Table(title=f"tokenizer {escape(tok.name)}", show_lines=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row(
        "vocab size",
        f"{tok.vocab_size:,} ({len(tok.ranks):,} BPE tokens + {len(tok.special_tokens)} specials)",
    )
    table.add_row(
        "specials",
        escape(", ".join(f"{s}={i}" for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]))),
    )
    table.add_row("pattern", escape(tok.pattern))
    ids = tok.encode(sample)
    pieces = " | ".join(escape(_show(tok.token_bytes(i))) for i in ids)
    table.add_row("sample", escape(sample))
    table.add_row("sample ids", " ".join(map(str, ids)))
    table.add_row("sample tokens", pieces)
    table.add_row("chars per token", f"{len(sample) / max(len(ids), 1):.2f}")
    Console(width=120).print(table)
