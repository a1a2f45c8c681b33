"""The int8-weight decode path: a quantised copy, close to fp32, and the caller's model untouched."""

from __future__ import annotations

import pytest
import torch

from chinwag.generate.engine import Engine, quantize_int8
from chinwag.generate.sampling import SamplingParams
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ChinwagLM(get_config("tiny", vocab_size=256, max_seq_len=64)).eval()


def test_int8_copy_is_close_to_fp32_and_leaves_the_original(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = model(ids)
        got, _ = q(ids)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
    assert cos > 0.99
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert not isinstance(q.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_engine_with_int8_weights_generates(model):
    eng = Engine(model, None, max_batch=2, quantize="int8")
    out = eng.generate([[1, 2, 3], [4, 5]], SamplingParams(temperature=0, max_new_tokens=5))
    assert [len(c.token_ids) for c in out] == [5, 5]
    with pytest.raises(ValueError, match="quantize"):
        Engine(model, None, quantize="int4")
