"""`chinwag quickstart` (placeholder)."""


def quickstart(out: str = "runs/quickstart") -> None:
    raise NotImplementedError
