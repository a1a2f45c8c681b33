"""`chinwag export ...` subcommands (placeholder: the owner of chinwag.export fills this in)."""

import typer

app = typer.Typer(no_args_is_help=True)
