"""chinwag.generate: sampling and the chat CLI."""
