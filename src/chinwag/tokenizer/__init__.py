"""chinwag.tokenizer: byte-level BPE (trained with HF tokenizers, run with tiktoken) and the chat template.

Heavy libraries (tokenizers, transformers) are imported lazily inside functions.
"""

from chinwag.tokenizer.chat import Rendered, render
from chinwag.tokenizer.core import PATTERN, SPECIAL_TOKENS, Tokenizer, TokenizerFileError

__all__ = ["PATTERN", "SPECIAL_TOKENS", "Rendered", "Tokenizer", "TokenizerFileError", "render", "train_bpe"]


def train_bpe(*args, **kwargs):
    from chinwag.tokenizer.train import train_bpe as _train

    return _train(*args, **kwargs)


train_bpe.__doc__ = "See chinwag.tokenizer.train.train_bpe."
