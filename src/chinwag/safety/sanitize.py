"""Sanitization: fold obfuscated text into a plain lowercase *matching view*, with an offset map back.

The user's text is never changed; rules and the classifier look at `Sanitized.text`, and every
evidence span is mapped back to the original through `Sanitized.orig_span`. Passes, in order:

1. per character: NFKC (fullwidth, math alphanumerics, circled letters -> ASCII), casefold, strip
   diacritics, fold Cyrillic/Greek look-alikes, drop zero-width and control characters;
2. leetspeak inside words ("h4ck", "k1ll", "$ex") -> letters;
3. spaced or dotted single letters ("k i l l", "b.o.m.b") -> one word;
4. letter runs of 3+ ("kiiiill") -> one letter; whitespace runs -> one space.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f")

# Look-alikes after casefold. Only letters that pass for Latin ones in common fonts.
HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ү": "y", "һ": "h", "ӏ": "l", "ь": "b", "п": "n", "г": "r", "з": "3",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k",
    "μ": "u", "ν": "v", "ο": "o", "ρ": "p", "σ": "o", "ς": "s", "τ": "t", "υ": "u", "χ": "x",
    "ω": "w",
    # typographic quotes and dashes, so "can’t" matches "can't"
    "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
    # Latin oddities
    "ı": "i", "ł": "l", "ø": "o", "ɑ": "a", "ɡ": "g", "ß": "ss", "æ": "ae", "œ": "oe", "đ": "d",
}  # fmt: skip

# Digits become letters inside any word that has a letter; symbols only between letters (or `$`/`@`
# opening a word), so "$100", "a@b.com" and "wow!" keep their meaning.
LEET_DIGITS = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e"}

_NUMBER_UNIT = re.compile(
    r"\d+(?:yo|y|th|st|nd|rd|s|am|pm|k|m|mm|cm|km|kg|lb|lbs|g|mg|ml|h|hr|hrs|min|x|d|p|gb|mb|v|ft|in)$"
)
# single letters joined by one repeated separator: "k i l l", "b.o.m.b", "f_i_r_e" (the backreference keeps
# "a f_i_r_e" from swallowing the article)
_SPACED = re.compile(r"(?<![a-z0-9])[a-z]([ .\-_*,/·~]{1,2})[a-z](?:\1[a-z])+(?![a-z0-9])")
_SEPARATORS = frozenset(" .-_*,/·~")


@dataclass
class Sanitized:
    original: str
    text: str  # the matching view
    offsets: list[int]  # offsets[i] = index in `original` of text[i]

    def orig_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) span of the matching view to the original text."""
        if not self.offsets or end <= start:
            return (0, 0)
        start = min(max(start, 0), len(self.offsets) - 1)
        end = min(max(end, start + 1), len(self.offsets))
        return self.offsets[start], self.offsets[end - 1] + 1


@lru_cache(maxsize=8192)
def _fold_char(ch: str) -> str:
    """One original character -> zero or more matching-view characters."""
    if ch in ZERO_WIDTH:
        return ""
    if ch in "\n\t\r\f\v":
        return " "
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Co", "Cs"):
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch).casefold():
        for d in unicodedata.normalize("NFD", c):
            if unicodedata.category(d) == "Mn":  # combining accent: "kíll" -> "kill"
                continue
            out.append(HOMOGLYPHS.get(d, d))
    return "".join(out)


def _is_alpha(c: str) -> bool:
    return "a" <= c <= "z"


def _leet(chars: list[str]) -> list[str]:
    n = len(chars)
    out = list(chars)
    i = 0
    while i < n:
        # a "word" here is a run of letters, digits and leet symbols
        j = i
        while j < n and (chars[j].isalnum() or chars[j] in LEET_SYMBOLS):
            j += 1
        if j == i:
            i += 1
            continue
        word = chars[i:j]
        if _NUMBER_UNIT.match("".join(word)):  # "12yo", "3d", "20mg", "5pm" are numbers, not leet
            i = j
            continue
        if any(_is_alpha(c) for c in word) and not all(c.isdigit() or c in LEET_SYMBOLS for c in word):
            for k in range(i, j):
                c = chars[k]
                if c in LEET_DIGITS:
                    out[k] = LEET_DIGITS[c]
                elif c in LEET_SYMBOLS:
                    prev_alpha = k > i and _is_alpha(chars[k - 1])
                    next_alpha = k + 1 < j and (_is_alpha(chars[k + 1]) or chars[k + 1] in LEET_DIGITS)
                    if (prev_alpha and next_alpha) or (k == i and c in "$@" and next_alpha):
                        out[k] = LEET_SYMBOLS[c]
        i = j
    return out


def sanitize(text: str) -> Sanitized:
    # pass 1: per character, keeping where each output char came from
    chars: list[str] = []
    offs: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii() and ch.isalnum():  # fast path: the common case
            chars.append(ch.lower())
            offs.append(i)
            continue
        for c in _fold_char(ch):
            chars.append(c)
            offs.append(i)
    # pass 2: leetspeak (same length, so offsets are unchanged)
    chars = _leet(chars)
    # pass 3: "k i l l" / "b.o.m.b" -> "kill" / "bomb"
    joined = "".join(chars)
    drop = set()
    for m in _SPACED.finditer(joined):
        for k in range(m.start(), m.end()):
            if joined[k] in _SEPARATORS:
                drop.add(k)
    # pass 4: collapse whitespace runs, and letter runs of 3+ to one letter ("kiiiill" -> "kill")
    out_c: list[str] = []
    out_o: list[int] = []
    run = 0  # length of the current run of out_c[-1]
    for k, c in enumerate(chars):
        if k in drop:
            continue
        if c == " " and (not out_c or out_c[-1] == " "):
            continue
        if out_c and c == out_c[-1] and c.isalpha():
            run += 1
            if run >= 3:
                if run == 3:  # drop the second copy; the run stays one letter from here on
                    out_c.pop()
                    out_o.pop()
                continue
        else:
            run = 1
        out_c.append(c)
        out_o.append(offs[k])
    return Sanitized(text, "".join(out_c), out_o)
