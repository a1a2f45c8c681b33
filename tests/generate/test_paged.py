"""The paged KV cache: same outputs as the contiguous cache, blocks freed and reused, queueing, errors."""

from __future__ import annotations

import pytest
import torch

from chinwag.generate.engine import Engine
from chinwag.generate.paged import OutOfBlocks, PagedKVCache
from chinwag.generate.sampling import SamplingParams
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config

V = 97


@pytest.fixture(scope="module")
def model() -> ChinwagLM:
    torch.manual_seed(0)
    return ChinwagLM(get_config("tiny", vocab_size=V, max_seq_len=64, init_std=0.2)).eval()


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, V, (int(torch.randint(1, 20, (), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def test_paged_equals_contiguous_greedy_and_seeded(model):
    ps = prompts(6)
    params = [
        SamplingParams(temperature=0, max_new_tokens=n) if i % 2 else SamplingParams(max_new_tokens=n, seed=i)
        for i, n in enumerate((10, 3, 17, 8, 1, 12))
    ]
    a = Engine(model, None, cache="contiguous", max_batch=4).generate(ps, params)
    b = Engine(model, None, cache="paged", max_batch=4, block_size=4, num_blocks=40).generate(ps, params)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]


def test_blocks_are_freed_and_reused(model):
    eng = Engine(model, None, cache="paged", max_batch=4, block_size=4, num_blocks=12)
    cache: PagedKVCache = eng.cache
    first = eng.add_request(list(range(1, 10)), SamplingParams(temperature=0, max_new_tokens=3))
    eng.step()
    used = list(cache.tables[first])
    assert len(used) == 3 and len(cache.free_blocks) == 9  # 9 prompt tokens -> 3 blocks of 4
    while eng.has_work():
        eng.step()
    assert len(cache.free_blocks) == 12 and not cache.tables  # everything returned
    second = eng.add_request(list(range(1, 10)), SamplingParams(temperature=0, max_new_tokens=3))
    eng.step()
    assert cache.tables[second] == used  # the same physical blocks serve the next sequence


def test_requests_wait_for_blocks_instead_of_failing(model):
    """A pool that fits ~2 requests at a time still serves 6, in order, with the contiguous outputs."""
    ps = prompts(6, seed=1)
    p = SamplingParams(temperature=0, max_new_tokens=8)
    eng = Engine(model, None, cache="paged", max_batch=8, block_size=4, num_blocks=14)
    peak = 0
    ids = [eng.add_request(x, p) for x in ps]
    done = {}
    while eng.has_work():
        for ev in eng.step():
            if ev.completion:
                done[ev.request_id] = ev.completion.token_ids
        peak = max(peak, eng.cache.num_seqs())
    assert 1 <= peak < 6  # never all at once: the pool is the limit, not max_batch
    ref = Engine(model, None).generate(ps, p)
    assert [done[i] for i in ids] == [c.token_ids for c in ref]
    assert len(eng.cache.free_blocks) == 14


def test_a_request_larger_than_the_pool_is_refused(model):
    eng = Engine(model, None, cache="paged", block_size=4, num_blocks=3)
    with pytest.raises(OutOfBlocks, match="KV blocks"):
        eng.add_request(list(range(1, 10)), SamplingParams(temperature=0, max_new_tokens=8))


def test_block_table_slots(model):
    cache = PagedKVCache(model.config, num_blocks=6, block_size=4, max_batch=2)
    cache.add(0, 10)
    cache.add(1, 10)
    ctx0 = cache.begin([0], 5)  # prefill 5 tokens: blocks 0, 1
    cache.commit(ctx0)
    ctx1 = cache.begin([1], 2)  # the other sequence gets the next free block
    cache.commit(ctx1)
    assert cache.tables == {0: [0, 1], 1: [2]}
    assert ctx0.extra["write"].tolist() == [0, 1, 2, 3, 4]
    dec = cache.begin([0, 1], 1)
    assert dec.extra["write"].tolist() == [5, 10]  # token 5 of seq 0 -> block 1 slot 1; token 2 of seq 1
    assert dec.bias is not None and dec.bias.shape == (2, 1, 1, 6)  # rows of different lengths masked
    cache.free(0)
    assert cache.free_blocks[-2:] == [1, 0]  # lowest id handed out first again
