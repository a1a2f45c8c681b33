"""`chinwag chat RUN` (placeholder)."""


def chat(run: str) -> None:
    raise NotImplementedError
