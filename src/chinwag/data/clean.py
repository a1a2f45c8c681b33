"""Cleaning: normalize text, then keep or drop whole conversations by simple quality filters.

A conversation is dropped as a whole (never a single message out of it) so turn order stays intact;
the reason of every drop is counted. Every threshold lives in `CleanConfig`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

from chinwag.data.schema import Conversation

_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, thin spaces, ...)
_MANY_NEWLINES = re.compile(r"\n{3,}")  # keep paragraphs (one blank line), drop bigger gaps
_RUN = re.compile(r"(\S)\1+")  # a run of one repeated non-space character
_NOT_ALNUM = re.compile(r"[\W_]+")  # everything but letters, digits (and combining marks)
# Control characters (category Cc) except newline/tab, plus BOM and zero-width space. Format characters
# such as the zero-width joiner (emoji sequences) are kept.
_CONTROL = {c: None for c in range(0x20) if c not in (9, 10)} | {0x7F: None, 0xFEFF: None, 0x200B: None}
_CONTROL |= {c: None for c in range(0x80, 0xA0)}
_CONTROL |= {0x2028: "\n", 0x2029: "\n"}


@dataclass
class CleanConfig:
    min_message_chars: int = 1  # a message shorter than this (after cleaning) drops its conversation
    max_message_chars: int = 8_000  # chat messages only; documents use max_document_chars
    min_conversation_chars: int = 2
    max_conversation_chars: int = 200_000
    max_document_chars: int = 20_000_000  # plain-text ("text" role) documents
    min_messages: int = 1
    max_messages: int = 1_000
    repeat_run: int = 6  # a character repeated this often in a row counts as a "run"
    max_repeat_fraction: float = 0.5  # drop text whose runs cover at least this share of its characters
    max_run_length: int = 100  # ... or that holds one run this long ("aaaa...a" x 100)
    max_bad_message_fraction: float = 0.2  # spam/non-text messages tolerated in a longer conversation
    nontext_min_chars: int = 16  # the letter-share test is meaningless for ":)" so only longer texts
    min_alpha_fraction: float = 0.25  # letters+digits / non-space characters; below this: symbols/binary
    max_replacement_fraction: float = 0.05  # U+FFFD share (undecodable bytes): binary junk
    require_assistant: bool = False  # SFT: a conversation with no assistant turn has nothing to learn

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_text(text: str) -> str:
    """NFC, newline normalization, control-character removal, whitespace collapsing per line."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROL)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def text_problem(text: str, cfg: CleanConfig) -> str | None:
    """The reason `text` (already normalized) is junk, or None. Checks repetition spam and non-text."""
    chars = len(text) - text.count(" ") - text.count("\n")
    if chars == 0:
        return None
    runs = [len(m.group(0)) for m in _RUN.finditer(text)]
    if runs and max(runs) >= cfg.max_run_length:
        return "repeated_chars"
    if sum(r for r in runs if r >= cfg.repeat_run) >= cfg.max_repeat_fraction * chars:
        return "repeated_chars"
    if text.count("\ufffd") > cfg.max_replacement_fraction * chars:
        return "non_text"
    if chars >= cfg.nontext_min_chars:
        alnum = len(_NOT_ALNUM.sub("", text))
        if alnum < cfg.min_alpha_fraction * chars:
            return "non_text"
    return None


def clean_conversation(conv: Conversation, cfg: CleanConfig) -> tuple[Conversation | None, str | None]:
    """Normalize every message; return (cleaned, None) or (None, reason it was dropped)."""
    messages = [{"role": m["role"], "content": normalize_text(m["content"])} for m in conv.messages]
    if not messages:
        return None, "empty"
    is_doc = messages[0]["role"] == "text"
    total = sum(len(m["content"]) for m in messages)
    if total == 0:
        return None, "empty"
    if len(messages) < cfg.min_messages:
        return None, "too_few_messages"
    if len(messages) > cfg.max_messages:
        return None, "too_many_messages"
    if total < cfg.min_conversation_chars:
        return None, "too_short"
    if total > (cfg.max_document_chars if is_doc else cfg.max_conversation_chars):
        return None, "too_long"
    bad: list[str] = []
    for m in messages:
        n = len(m["content"])
        if n < cfg.min_message_chars:
            return None, "empty_message" if n == 0 else "message_too_short"
        if not is_doc and n > cfg.max_message_chars:
            return None, "message_too_long"
        reason = text_problem(m["content"], cfg)
        if reason:
            bad.append(reason)
    # One "Nooooooo!!" in a 30-turn human chat is expression, not spam; a record that is mostly junk
    # (or a single junk message, or a Q&A pair with a junk answer) is dropped.
    if bad and len(bad) > cfg.max_bad_message_fraction * len(messages):
        return None, bad[0]
    if any(m["role"] == "system" for m in messages[1:]):
        return None, "misplaced_system"  # the chat template allows a system prompt only first
    if cfg.require_assistant and not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn"
    return Conversation(conv.id, messages, conv.source), None
