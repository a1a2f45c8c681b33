"""`chinwag dlp ...`: synthetic corpus and the DSL tokenizer (issue 8). Heavy imports live inside commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Data-loss-prevention scanner: corpus, tokenizer.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train and try the SentencePiece DSL tokenizer.")
app.add_typer(tokenizer_app, name="tokenizer")


def _fail(msg: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: one line however long the path, so the message stays greppable
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(msg)}", highlight=False)
    raise typer.Exit(1)


@app.command()
def synth(
    n: int = typer.Option(10000, "--n", min=1, help="Number of documents."),
    seed: int = typer.Option(
        0, help="Generator seed; the same (n, seed, split, difficulty) gives the same file."
    ),
    split: str = typer.Option("train", help="train|val|test (disjoint templates)."),
    difficulty: str = typer.Option(
        "mixed",
        help="easy (short, few obfuscations and hard negatives) | mixed | hard (long, many of both).",
    ),
    out: Path = typer.Option(..., help="Output JSONL file (one document + gold spans + labels per line)."),
):
    """Generate a seeded synthetic DLP corpus with gold spans and policy labels."""
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from chinwag.dlp import synth as synth_mod

    if split not in synth_mod.SPLITS:
        raise typer.BadParameter(
            f"{split!r} is not one of {'|'.join(synth_mod.SPLITS)}", param_hint="--split"
        )
    if difficulty not in synth_mod.DIFFICULTIES:
        raise typer.BadParameter(
            f"{difficulty!r} is not one of {'|'.join(synth_mod.DIFFICULTIES)}", param_hint="--difficulty"
        )
    examples = []
    for i in track(range(n), description=f"generating {split} ({difficulty})", transient=True):
        ex = synth_mod._example(seed, split, i, difficulty)  # doc i does not depend on n: stream them
        ex.doc.id = synth_mod.doc_id(seed, split, i, difficulty)
        examples.append(ex)
    synth_mod.write_jsonl(examples, out)
    labels = Counter(s.label for ex in examples for s in ex.spans)
    obf = Counter(s.label for ex in examples for s in ex.obfuscated)
    decisions = Counter((synth_mod.doc_labels(ex) or {}).get("decision", "?") for ex in examples)
    table = Table(title=f"{n} {split} documents ({difficulty}) -> {out}")
    table.add_column("label")
    table.add_column("spans", justify="right")
    table.add_column("obfuscated", justify="right")
    for lab, c in sorted(labels.items()):
        table.add_row(lab, str(c), str(obf[lab]))
    for dec, c in sorted(decisions.items()):
        table.add_row(f"decision {dec}", str(c), "")
    Console().print(table)


def _read_docs(path: Path):
    from chinwag.dlp.dsl import Document, DocumentError

    if not path.is_file():
        _fail(f"{path}: file not found")
    keep = set(Document.__dataclass_fields__)
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(f"{path}:{lineno}: invalid JSON ({e.msg})")
            if not isinstance(rec, dict):
                _fail(f"{path}:{lineno}: expected a JSON object")
            try:  # synth records carry extra keys (spans, labels, ...): keep the document schema's
                docs.append(Document.from_dict({k: v for k, v in rec.items() if k in keep}))
            except DocumentError as e:
                _fail(f"{path}:{lineno}: {e}")
    if not docs:
        _fail(f"{path}: no documents")
    return docs


@tokenizer_app.command("train")
def tokenizer_train(
    data: Path = typer.Option(..., help="JSONL of documents (e.g. from `chinwag dlp synth`)."),
    vocab_size: int = typer.Option(16000, min=300, help="SentencePiece vocabulary size."),
    seed: int = typer.Option(0, help="SentencePiece sampling seed."),
    general: float = typer.Option(
        0.5, min=0.0, help="Add this much general text (chat + Python source) per character of DSL text."
    ),
    eval_data: Path | None = typer.Option(
        None, "--eval", help="JSONL of held-out documents to measure tokens per 2 KB on (default: --data)."
    ),
    out: Path = typer.Option(..., help="Tokenizer file to write (JSON with the model proto, atomic)."),
):
    """Serialize each document with the DSL, train the SentencePiece tokenizer on the texts, and print how
    many tokens a 2 KB document takes (mean / p95 / max; issue 8's budget is 512)."""
    import time

    from rich.progress import track

    from chinwag.dlp.dsl import serialize
    from chinwag.dlp.tokenizer import DLPTokenizer, density

    docs = _read_docs(data)
    held_out = _read_docs(eval_data) if eval_data is not None else None
    texts = [serialize(d).text for d in track(docs, description="serializing", transient=True)]
    t0 = time.perf_counter()
    try:
        tok = DLPTokenizer.train(texts, vocab_size=vocab_size, seed=seed, general=general)
    except (RuntimeError, ValueError) as e:  # "Vocabulary size too high (16000). Please set it to <= ..."
        _fail(f"{data}: training failed: {str(e).strip().splitlines()[-1]}")
    took = time.perf_counter() - t0
    tok.save(out)
    typer.echo(f"trained {tok.vocab_size} pieces on {len(texts)} docs in {took:.1f}s -> {out}")
    measured = texts if held_out is None else [serialize(d).text for d in held_out]
    d = density(tok, track(measured, description="measuring", transient=True))
    typer.echo(
        f"tokens per 2 KB on {d['n']} {'training' if held_out is None else 'held-out'} docs: "
        f"mean {d['mean']:.0f}, p50 {d['p50']:.0f}, p95 {d['p95']:.0f}, max {d['max']:.0f} "
        f"({d['over_512']:.0%} over 512)"
    )


@tokenizer_app.command("encode")
def tokenizer_encode(
    text: str = typer.Argument(..., help="Text to tokenize."),
    tokenizer: Path = typer.Option(..., help="Tokenizer file from `chinwag dlp tokenizer train`."),
):
    """Print each token's id, piece and [start, end) code-point offsets."""
    from chinwag.dlp.tokenizer import DLPTokenizer

    try:
        tok = DLPTokenizer.load(tokenizer)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    enc = tok.encode(text)
    for i, (s, e) in zip(enc.ids, enc.offsets, strict=True):
        typer.echo(f"{i}\t{tok.id_to_piece(i)!r}\t{s}\t{e}\t{text[s:e]!r}")
    typer.echo(f"{len(enc)} tokens")


# training/calibration and scanning/evaluation live in their own modules; each adds its commands to `app`
from chinwag.dlp import cli_scan, cli_train  # noqa: E402

cli_train.register(app)
cli_scan.register(app)
