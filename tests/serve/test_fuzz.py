"""Schemathesis fuzzes every /v1 operation from /openapi.json against a live server: no 5xx, ever.

Generated bodies include valid and invalid ones (wrong types, missing fields, out-of-range values, odd
unicode); a bounded context (128 tokens) and n <= 16 keep every accepted request short.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from chinwag.serve.app import create_app
from tests.serve.conftest import live, wait_idle


@pytest.fixture(scope="module")
def fuzz_app(run_dir):
    return create_app(run_dir, max_batch=8, max_queue=256)


@pytest.fixture(scope="module")
def fuzz_url(fuzz_app):
    with live(fuzz_app) as url:
        yield url


def _operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json").include(path_regex=r"^/v1/")
    return [r.ok() for r in schema.get_all_operations()]


# schemathesis' own pytest plugin does not load under this pytest, so drive its strategies with hypothesis
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzz_url, mode):
    ops = _operations(fuzz_url)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    for op in ops:
        if mode == GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # nothing to get wrong in a GET without parameters

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case):
            response = case.call(base_url=fuzz_url, timeout=60)
            where = (
                f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} {response.text:.300}"
            )
            assert response.status_code < 500, where
            if response.status_code >= 400:
                err = response.json()["error"]
                assert err["code"] == response.status_code and err["message"], where

        check()


def test_fuzzing_left_nothing_running(fuzz_app, fuzz_url):
    assert wait_idle(fuzz_app, 30)
    assert fuzz_app.state.server.engine.cache.num_seqs() == 0
