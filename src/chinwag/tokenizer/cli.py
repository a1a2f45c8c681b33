"""`chinwag tokenizer ...` subcommands (placeholder: the owner of chinwag.tokenizer fills this in)."""

import typer

app = typer.Typer(no_args_is_help=True)
