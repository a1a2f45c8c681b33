"""`chinwag train ...` subcommands (placeholder: the owner of chinwag.train fills this in)."""

import typer

app = typer.Typer(no_args_is_help=True)
