"""Placeholder: the owner fills this in."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `chinwag align`."""
