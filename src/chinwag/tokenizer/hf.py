"""Hugging Face tokenizer files for a chinwag `Tokenizer` (for export and for parity tests).

`tokenizer.json` is written as plain JSON (not through the `tokenizers` builder API) so every id stays
exactly ours, including gap ids in cl100k/o200k: the BPE vocab holds the ranks in GPT-2 byte-to-unicode
form, the merges come from `Tokenizer.merges()`, and the specials are `added_tokens` with their own ids.
`ignore_merges=True` (a whole pre-token that is in the vocab is taken as is) is what makes HF BPE
give the same ids as tiktoken and llama.cpp's `llama-bpe`.

One known, intended difference: HF matches special-token strings inside text (it must, or
`apply_chat_template`, which tokenizes a rendered string, could not work), whereas `Tokenizer.encode`
never does. The two agree on all text that contains no special-token string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chinwag.tokenizer.core import Tokenizer, bytes_to_token_str

# eos for generation is the end-of-turn token: a chat model stops when it closes its turn. (<|eos|> ends a
# pretraining document; generation code stops at either.)
GENERATION_EOS = "<|end|>"

# Renders exactly `chat.render(messages, tok, add_generation_prompt)`: <|bos|> then <|role|>content<|end|>
# per message, then <|assistant|> for the generation prompt. `raise_exception` is provided by transformers.
CHAT_TEMPLATE = (
    "{{- '<|bos|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('chinwag chat template: unknown role ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{- raise_exception('chinwag chat template: system message must come first') -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def _pre_tokenizer(pattern: str) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def hf_tokenizer_json(tok: Tokenizer) -> dict:
    """The tokenizer.json object (HF `tokenizers` format version 1.0)."""
    vocab = {bytes_to_token_str(b): i for b, i in sorted(tok.ranks.items(), key=lambda kv: kv[1])}
    merges = [[bytes_to_token_str(a), bytes_to_token_str(b)] for a, b in tok.merges()]
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(tok.pattern),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def build_hf_tokenizer(tok: Tokenizer):
    """A `tokenizers.Tokenizer` equivalent to `tok` (rebuilt from its ranks + derived merges)."""
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_str(json.dumps(hf_tokenizer_json(tok), ensure_ascii=False))


def save_hf_tokenizer_files(
    tok: Tokenizer, out_dir: str | os.PathLike, model_max_length: int | None = None
) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json, chat_template.jinja and special_tokens_map.json.

    `PreTrainedTokenizerFast.from_pretrained(out_dir).apply_chat_template(msgs, add_generation_prompt=True)`
    returns exactly `render(msgs, tok, add_generation_prompt=True).ids`. Returns the written paths.
    """
    from chinwag.utils import atomic_write_text, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")]
    paths.append(out / "special_tokens_map.json")
    atomic_write_text(paths[0], json.dumps(hf_tokenizer_json(tok), ensure_ascii=False, indent=1) + "\n")
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": GENERATION_EOS,
        "pad_token": "<|pad|>",
        "unk_token": None,
        # Explicit: llama.cpp's llama-bpe defaults add_bos to true, transformers to the post-processor.
        # The chat template inserts <|bos|> itself, so plain encoding must not add one.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length if model_max_length is not None else int(1e30),
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s, i in specials
        },
        "chat_template": CHAT_TEMPLATE,
    }
    write_json(paths[1], config)
    atomic_write_text(paths[2], CHAT_TEMPLATE + "\n")
    write_json(
        paths[3],
        {
            "bos_token": "<|bos|>",
            "eos_token": GENERATION_EOS,
            "pad_token": "<|pad|>",
            "additional_special_tokens": [
                s for s, _ in specials if s not in ("<|bos|>", "<|end|>", "<|pad|>")
            ],
        },
    )
    return paths
