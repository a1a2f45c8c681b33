"""The record every reader yields, the error it raises, and the report every stage adds counts to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

CHAT_ROLES = ("system", "user", "assistant")
ROLES = (*CHAT_ROLES, "text")  # "text": a plain pretraining document (one message)


class DataError(ValueError):
    """Bad input data. The message names file:line and the reason, so the CLI can print it as is."""


@dataclass
class Conversation:
    id: str
    messages: list[dict[str, str]]  # [{"role": ..., "content": ...}]
    source: str = ""

    @property
    def is_text(self) -> bool:
        return len(self.messages) == 1 and self.messages[0]["role"] == "text"

    def text(self) -> str:
        """The plain text of the record: the turns' contents joined with newlines (pretrain view)."""
        return "\n".join(m["content"] for m in self.messages)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "messages": self.messages}


def content_id(messages: list[dict[str, str]]) -> str:
    """An id from the content itself, for records that have none: stable across file order and paths."""
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return "h" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class Report:
    """Counts of everything read, skipped, filtered and split. Every dropped record lands in a counter."""

    read: dict[str, int] = field(default_factory=dict)  # per source: records yielded
    skipped: dict[str, int] = field(default_factory=dict)  # malformed records, per reason
    problems: list[str] = field(default_factory=list)  # first few "file:line: reason" lines
    max_problems: int = 20

    def problem(self, where: str, kind: str, detail: str) -> None:
        """Record one malformed record: `kind` is the counter key, `detail` the human-readable reason."""
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if len(self.problems) < self.max_problems:
            self.problems.append(f"{where}: {detail}")

    def count_read(self, source: str, n: int = 1) -> None:
        self.read[source] = self.read.get(source, 0) + n

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": dict(self.read),
            "read_total": sum(self.read.values()),
            "skipped_malformed": dict(self.skipped),
            "skipped_malformed_total": self.n_skipped,
            "first_problems": list(self.problems),
        }
