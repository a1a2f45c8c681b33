"""`chinwag model ...` subcommands (placeholder: the owner of chinwag.model fills this in)."""

import typer

app = typer.Typer(no_args_is_help=True)
