"""chinwag.data: read, clean, dedup and split conversation corpora; write and load memmapped token files.

read_records(source) -> Conversations      prepare(source, out_dir, tokenizer=...) -> report
iter_texts(source) -> texts (tokenizer)    load_split(folder, split, seq_len) -> TokenDataset
"""

from chinwag.data.clean import CleanConfig, clean_conversation, normalize_text
from chinwag.data.dataset import TokenDataset, load_split
from chinwag.data.dedup import Deduper
from chinwag.data.prepare import prepare, split_of
from chinwag.data.readers import is_prepared, iter_texts, read_records
from chinwag.data.schema import Conversation, DataError, Report

__all__ = [
    "CleanConfig",
    "Conversation",
    "DataError",
    "Deduper",
    "Report",
    "TokenDataset",
    "clean_conversation",
    "is_prepared",
    "iter_texts",
    "load_split",
    "normalize_text",
    "prepare",
    "read_records",
    "split_of",
]
