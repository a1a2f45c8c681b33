"""`chinwag conversations list|show|export`: read the conversation store the server writes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from chinwag.serve.store import DB_FILENAME

app = typer.Typer(no_args_is_help=True)

DB_HELP = f"The conversation database (the server's --db), or a run folder (its {DB_FILENAME})."


def _open(db: Path):
    from rich.console import Console

    from chinwag.serve.store import ConversationStore, StoreError

    if db.is_dir():  # a run folder: `chinwag serve RUN` stores at RUN/conversations.sqlite by default
        db = db / DB_FILENAME
    if not db.is_file():
        Console(stderr=True).print(f"[red]{db}: no such database (pass --db PATH)[/red]")
        raise typer.Exit(1)
    try:
        return ConversationStore(db)
    except StoreError as e:
        Console(stderr=True).print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


@app.command("list")
def list_(
    db: Path = typer.Option(Path(DB_FILENAME), "--db", help=DB_HELP),
    limit: int = typer.Option(20, min=1, help="How many conversations to show."),
    offset: int = typer.Option(0, min=0, help="Skip this many (most recent first)."),
) -> None:
    """List stored conversations, most recently updated first."""
    from rich.console import Console
    from rich.table import Table

    with _open(db) as store:
        total, rows = len(store), store.list(limit=limit, offset=offset)
    table = Table(title=f"{store.path}: conversations {offset + 1}-{offset + len(rows)} of {total}")
    for col, kw in (
        ("id", {"no_wrap": True}),
        ("updated", {"no_wrap": True}),
        ("messages", {"justify": "right"}),
        ("tokens in/out", {"justify": "right"}),
        ("model", {}),
        ("title", {}),
    ):
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(
            r["id"],
            _when(r["updated_at"]),
            str(r["n_messages"]),
            f"{r['prompt_tokens']}/{r['completion_tokens']}",
            r["model"] or "",
            r["title"],
        )
    Console().print(table)


@app.command()
def show(
    conversation_id: str = typer.Argument(
        ..., help="The conversation id (from `chinwag conversations list`)."
    ),
    db: Path = typer.Option(Path(DB_FILENAME), "--db", help=DB_HELP),
) -> None:
    """Show one conversation: every message with its model, sampling params, tokens and latency."""
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    with _open(db) as store:
        conv = store.get(conversation_id)
    con = Console()
    if conv is None:
        Console(stderr=True).print(f"[red]{store.path}: no conversation with id {conversation_id!r}[/red]")
        raise typer.Exit(1)
    table = Table(title=f"{escape(conv['id'])}: {escape(conv['title'])}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("role")
    table.add_column("content", ratio=1)
    table.add_column("model / params / tokens / latency")
    for m in conv["messages"]:
        meta = ""
        if m["model"]:
            params = json.dumps(m["params"] or {}, sort_keys=True)
            tokens = f"{m['prompt_tokens']} in / {m['completion_tokens']} out"
            latency = f"{m['latency_ms']:.0f} ms" if m["latency_ms"] is not None else "?"
            meta = f"{m['model']}\n{params}\n{tokens}\n{latency}"
        # markup=False semantics: contents are user/model text, never rich markup.
        table.add_row(str(m["seq"]), m["role"], escape(m["content"]), escape(meta))
    con.print(table)


@app.command()
def export(
    out: Path = typer.Argument(..., help="Output JSONL file (the data layer's `messages` format)."),
    db: Path = typer.Option(Path(DB_FILENAME), "--db", help=DB_HELP),
    ids: list[str] = typer.Option(None, "--id", help="Export only this conversation (repeatable)."),
) -> None:
    """Export conversations to `messages` JSONL, ready for `chinwag data prepare` (logs -> training data)."""
    from rich.console import Console

    from chinwag.serve.store import StoreError

    with _open(db) as store:
        try:
            n = store.export_jsonl(out, ids=ids or None)
        except StoreError as e:
            Console(stderr=True).print(f"[red]{store.path}: {e}[/red]")
            raise typer.Exit(1) from None
    Console().print(f"wrote {n} conversation(s) to {out}")
