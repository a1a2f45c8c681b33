"""Fixtures for the data tests: real tokenizers (cheap to build) and small corpus writers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cl100k():
    from chinwag.tokenizer.core import Tokenizer

    return Tokenizer.from_pretrained("cl100k_base")  # vocab > 65536: uint32 token files


@pytest.fixture(scope="session")
def byte_tok():
    from chinwag.tokenizer.core import Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)})  # tiny vocab: uint16 token files


@pytest.fixture(scope="session")
def chitchat_records():
    from chinwag.data import read_records

    return list(read_records("chitchat"))
