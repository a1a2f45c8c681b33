"""`chinwag plot RUN` (placeholder)."""


def plot(run: str) -> None:
    raise NotImplementedError
