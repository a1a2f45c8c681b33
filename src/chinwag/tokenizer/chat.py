"""The chat template: messages -> token ids + loss mask.

Layout (ids, not text, so no user string can forge a turn boundary):

    <|bos|> <|system|>...<|end|> <|user|>...<|end|> <|assistant|>...<|end|> ... [<|assistant|>]

Only assistant content and its closing `<|end|>` carry loss (mask 1): the model learns to answer and
to stop, never to imitate the user. The trailing `<|assistant|>` is the generation prompt.
Content is always encoded with `tok.encode`, which never yields special ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chinwag.tokenizer.core import ROLES, Tokenizer


@dataclass
class Rendered:
    ids: list[int]
    loss_mask: list[int]
    dropped: int = 0  # whole messages dropped by truncation
    truncated: bool = False  # the last kept message's content was cut from the left

    def __len__(self) -> int:
        return len(self.ids)


def validate_messages(messages: Sequence[Mapping]) -> None:
    """Raise ValueError naming the offending message if `messages` is not a valid chat."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{role, content}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(
                f"messages[{i}]: unknown role {m['role']!r} (expected one of: {', '.join(ROLES)})"
            )
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]: content must be a string, got {type(m['content']).__name__}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"messages[{i}]: a system message is only allowed as the first message")


def _turn(tok: Tokenizer, role: str, content: list[int]) -> tuple[list[int], list[int]]:
    ids = [tok.special_id(role), *content, tok.end_id]
    w = 1 if role == "assistant" else 0
    return ids, [0] + [w] * (len(content) + 1)


def render(
    messages: Sequence[Mapping],
    tok: Tokenizer,
    add_generation_prompt: bool = False,
    max_tokens: int | None = None,
) -> Rendered:
    """Render a conversation to ids and a loss mask (1 = train on this token).

    Truncation (only when `max_tokens` is given and the full render is longer): the result is at most
    `max_tokens` ids, always starting with <|bos|> and ending with the generation prompt if asked for.
      1. The system prompt (first message, if role system) is kept if it fits beside the minimal last
         turn (its header + <|end|>); otherwise it is dropped.
      2. The remaining messages are kept newest-first while whole messages fit; older messages are
         dropped whole (a turn's header is never cut).
      3. If not even the last message fits, its *content* is cut from the left (its header and <|end|>
         stay, the most recent content tokens are kept).
    Raises ValueError if `max_tokens` cannot hold <|bos|>, a header, <|end|> and the generation prompt.
    """
    validate_messages(messages)
    encoded = [(m["role"], tok.encode(m["content"])) for m in messages]
    prompt = [tok.assistant_id] if add_generation_prompt else []

    def assemble(turns, dropped=0, truncated=False) -> Rendered:
        ids, mask = [tok.bos_id], [0]
        for role, content in turns:
            t_ids, t_mask = _turn(tok, role, content)
            ids += t_ids
            mask += t_mask
        return Rendered(ids + prompt, mask + [0] * len(prompt), dropped, truncated)

    def cost(turn) -> int:
        return len(turn[1]) + 2

    total = 1 + sum(map(cost, encoded)) + len(prompt)
    if max_tokens is None or total <= max_tokens:
        return assemble(encoded)

    fixed = 1 + len(prompt)
    if fixed + (2 if encoded else 0) > max_tokens:
        raise ValueError(
            f"max_tokens={max_tokens} is too small for <|bos|>, one turn header/end and the prompt"
        )
    system = [encoded[0]] if encoded[0][0] == "system" and len(encoded) > 1 else []
    rest = encoded[len(system) :]
    if system and fixed + cost(system[0]) + 2 > max_tokens:
        system = []  # the system prompt cannot fit beside even an empty last turn
    budget = max_tokens - fixed - sum(map(cost, system))
    kept: list = []
    for turn in reversed(rest):
        if cost(turn) > budget:
            break
        kept.append(turn)
        budget -= cost(turn)
    kept.reverse()
    if kept:
        return assemble(system + kept, dropped=len(encoded) - len(system) - len(kept))
    role, content = rest[-1]
    keep = budget - 2  # >= 0 by the checks above
    cut = (role, content[len(content) - keep :] if keep > 0 else [])
    return assemble(system + [cut], dropped=len(encoded) - len(system) - 1, truncated=True)
