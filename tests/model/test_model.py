"""Behaviour of ChinwagLM: masking, padding, KV cache, training, options."""

from __future__ import annotations

import pytest
import torch

from chinwag.model.config import ModelConfig
from chinwag.model.model import ChinwagLM, KVCache


def cfg(**kw) -> ModelConfig:
    base = dict(
        vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=64
    )
    return ModelConfig(**(base | kw))


def model(**kw) -> ChinwagLM:
    torch.manual_seed(0)
    return ChinwagLM(cfg(**kw)).eval()


HF_NAMES = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{n}.weight"
        for i in range(2)
        for n in (
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ),
}


def test_state_dict_names_are_hf_llama_names():
    m = model()
    assert set(m.state_dict()) == HF_NAMES
    assert m.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)


def test_tied_embeddings_share_one_parameter():
    m = model(tie_embeddings=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    untied = model(tie_embeddings=False)
    assert untied.num_params() - m.num_params() == 97 * 64
    ids = torch.randint(0, 97, (1, 8))
    _, loss = m.train()(ids, targets=ids)
    loss.backward()
    assert m.model.embed_tokens.weight.grad is m.lm_head.weight.grad


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_causal_future_tokens_never_change_past_logits(position):
    m = model(position=position)
    ids = torch.randint(0, 97, (2, 24))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, 97, (2, 12))
    a, _ = m(ids)
    b, _ = m(changed)
    assert torch.equal(a[:, :12], b[:, :12]) or torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_sequences(position, side):
    m = model(position=position)
    lens = [16, 9, 4]
    seqs = [torch.randint(0, 97, (n,)) for n in lens]
    T = max(lens)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, True
    logits, _ = m(ids, attention_mask=mask)
    assert torch.isfinite(logits).all()  # padding query rows must not produce NaN
    for i, s in enumerate(seqs):
        ref, _ = m(s[None])
        assert torch.allclose(logits[i][mask[i]], ref[0], atol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kv_cache_decode_equals_full_forward(n_kv_heads):
    m = model(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 97, (2, 30))
    full, _ = m(ids)
    cache = KVCache.for_model(m, batch_size=2, max_len=40)
    steps = [m(ids[:, :10], kv_cache=cache, start_pos=0)[0]]
    for t in range(10, 30):
        assert len(cache) == t
        steps.append(m(ids[:, t : t + 1], kv_cache=cache, start_pos=t)[0])
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    cache.reset()
    assert len(cache) == 0
    again, _ = m(ids, kv_cache=cache)
    assert torch.allclose(again, full, atol=1e-5)


def test_kv_cache_with_left_padding_matches_unpadded():
    m = model(position="learned")
    a, b = torch.randint(0, 97, (12,)), torch.randint(0, 97, (7,))
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.ones(2, 12, dtype=torch.bool)
    ids[0], ids[1, 5:], mask[1, :5] = a, b, False
    cache = m.new_kv_cache(2, 20)
    m(ids[:, :-1], attention_mask=mask[:, :-1], kv_cache=cache)
    last, _ = m(ids[:, -1:], kv_cache=cache, start_pos=11)  # new token is real: mask defaults to True
    ref_a, _ = m(a[None])
    ref_b, _ = m(b[None])
    assert torch.allclose(last[0, 0], ref_a[0, -1], atol=1e-5)
    assert torch.allclose(last[1, 0], ref_b[0, -1], atol=1e-5)


def test_kv_cache_overflow_is_a_clear_error():
    m = model()
    cache = m.new_kv_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache"):
        m(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = ChinwagLM(cfg(n_layers=2, d_model=64)).train()
    ids = torch.randint(0, 97, (4, 33))
    targets = ids[:, 1:].clone()
    targets[:, :4] = -100  # ignored positions must not count
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=1e-2)
    for _ in range(150):
        _, loss = m(ids[:, :-1], targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_all_ignored_targets_give_zero_loss_not_nan():
    m = model()
    ids = torch.randint(0, 97, (2, 8))
    _, loss = m(ids, targets=torch.full_like(ids, -100))
    assert loss.item() == 0.0


def _grads(m, ids):
    m.zero_grad()
    _, loss = m(ids[:, :-1], targets=ids[:, 1:])
    loss.backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_gradient_checkpointing_gives_same_grads():
    m = model().train()
    ids = torch.randint(0, 97, (2, 17))
    ref = _grads(m, ids)
    m.config.gradient_checkpointing = True
    got = _grads(m, ids)
    for n in ref:
        assert torch.allclose(ref[n], got[n], atol=1e-6), n


def test_ffn_chunk_size_gives_same_output():
    ids = torch.randint(0, 97, (2, 23))
    a, _ = model()(ids)
    b, _ = model(ffn_chunk_size=5)(ids)
    assert torch.allclose(a, b, atol=1e-6)


def test_rope_scaling_variants():
    ids = torch.randint(0, 97, (1, 40))
    none, _ = model()(ids)
    lin1, _ = model(rope_scaling={"type": "linear", "factor": 1.0})(ids)
    assert torch.equal(none, lin1)
    outs = {}
    for rs in (
        {"type": "linear", "factor": 4.0},
        {"type": "dynamic", "factor": 2.0, "original_max_seq_len": 16},
        {"type": "yarn", "factor": 4.0, "original_max_seq_len": 16, "beta_fast": 32, "beta_slow": 1},
    ):
        out, _ = model(rope_scaling=rs, max_seq_len=64)(ids)
        assert torch.isfinite(out).all()
        assert not torch.allclose(out, none)
        outs[rs["type"]] = out
    # dynamic NTK leaves sequences within the original length untouched
    short = ids[:, :16]
    assert torch.equal(
        model()(short)[0],
        model(rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_seq_len": 16})(short)[0],
    )


def test_learnable_rope_freqs_train():
    m = model(learnable_rope_freqs=True).train()
    assert "model.rotary_emb.inv_freq" in dict(m.named_parameters())
    ids = torch.randint(0, 97, (2, 9))
    a, _ = model()(ids)
    b, _ = m.eval()(ids)
    assert torch.allclose(a, b, atol=1e-6)  # starts at the fixed frequencies
    m.train()
    _, loss = m(ids, targets=ids)
    loss.backward()
    assert m.model.rotary_emb.inv_freq.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu", "relu2"])
@pytest.mark.parametrize("position", ["rope", "learned"])
def test_every_option_runs(activation, position):
    m = model(activation=activation, position=position, qk_norm=True, dropout=0.1).train()
    ids = torch.randint(0, 97, (2, 12))
    logits, loss = m(ids, targets=ids)
    assert logits.shape == (2, 12, 97) and torch.isfinite(loss)
    loss.backward()
    assert ("gate_proj" in str(list(m.state_dict()))) == (activation == "swiglu")
    if position == "learned":
        assert "model.embed_positions.weight" in m.state_dict()


def test_dropout_only_in_training():
    m = model(dropout=0.5)
    ids = torch.randint(0, 97, (1, 8))
    assert torch.equal(m.eval()(ids)[0], m(ids)[0])
    m.train()
    assert not torch.equal(m(ids)[0], m(ids)[0])


def test_scaled_init():
    m = ChinwagLM(cfg(n_layers=8, d_model=256, n_heads=4, ffn_hidden=1024))
    q = m.model.layers[0].self_attn.q_proj.weight.std().item()
    o = m.model.layers[0].self_attn.o_proj.weight.std().item()
    assert abs(q - 0.02) < 2e-3 and abs(o - 0.02 / 4) < 1e-3  # 0.02 / sqrt(2 * 8)
    assert torch.equal(m.model.norm.weight, torch.ones(256))


def test_param_groups_and_flops():
    m = model(tie_embeddings=False, qk_norm=True)
    decay, no_decay = m.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    n = m.num_params(exclude_embeddings=True)
    assert n == m.num_params() - 97 * 64
    assert m.estimate_flops_per_token(32) == 6 * n + 12 * 2 * 4 * 16 * 32


def test_bf16_forward_and_cache():
    m = model().to(torch.bfloat16)
    ids = torch.randint(0, 97, (1, 10))
    full, _ = m(ids)
    cache = m.new_kv_cache(1, 10)
    assert cache.k.dtype == torch.bfloat16
    m(ids[:, :9], kv_cache=cache)
    last, _ = m(ids[:, 9:], kv_cache=cache, start_pos=9)
    assert (last[0, 0].float() - full[0, -1].float()).abs().max() < 0.1
