"""DLPModel (issue 8): shapes, padding invariance, segments and the detached carry, gate ablation, thread
memory seed, determinism, config round trip, and a tiny overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chinwag.dlp.model import (
    DLPConfig,
    DLPConfigError,
    DLPModel,
    get_dlp_config,
    meta_param_count,
)


def tiny(**kw) -> DLPModel:
    torch.manual_seed(0)
    return DLPModel(get_dlp_config("dlp-tiny", **kw)).eval()


def ids(B=2, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (B, T), generator=g)


def test_output_shapes():
    m = tiny()
    cfg = m.config
    out = m(ids(2, 40), segment_len=16)  # segments of 16, 16, 8 tokens; ticks every 8
    assert out.doc_logits.shape == (2, cfg.n_doc_heads)
    assert out.bio_logits.shape == (2, 40, cfg.n_bio_tags) == (2, 40, 21)
    assert out.memory.shape == (2, cfg.memory_dim)
    assert out.flag_logits.shape == (2, cfg.n_flags) == (2, 7)
    assert out.slow_state.shape == (2, cfg.slow_dim)
    assert len(out.per_segment_doc_logits) == 3
    assert torch.equal(out.doc_logits, out.per_segment_doc_logits[-1])
    with pytest.raises(ValueError, match="pool_every"):
        m(ids(), segment_len=12)


def test_padding_does_not_change_real_outputs():
    m = tiny()
    x = ids(1, 20)
    ref = m(x, segment_len=16)
    padded = torch.cat([x, torch.full((1, 21), 5)], dim=1)  # 41 tokens: two more segments, one all-pad
    mask = torch.zeros_like(padded, dtype=torch.bool)
    mask[:, :20] = True
    out = m(padded, attention_mask=mask, segment_len=16)
    assert torch.allclose(out.bio_logits[:, :20], ref.bio_logits, atol=1e-5)
    assert torch.allclose(out.doc_logits, ref.doc_logits, atol=1e-5)
    assert torch.allclose(out.slow_state, ref.slow_state, atol=1e-5)
    assert torch.allclose(out.memory, ref.memory, atol=1e-5)
    assert torch.allclose(out.flag_logits, ref.flag_logits, atol=1e-5)
    # batched with a longer row: the short row's results still match
    batch = torch.cat([padded, ids(1, 41, seed=2)])
    bmask = torch.cat([mask, torch.ones(1, 41, dtype=torch.bool)])
    out2 = m(batch, attention_mask=bmask, segment_len=16)
    assert torch.allclose(out2.doc_logits[0], ref.doc_logits[0], atol=1e-5)
    assert torch.allclose(out2.bio_logits[0, :20], ref.bio_logits[0], atol=1e-5)


def test_slow_state_changes_across_segments_and_seed_matters():
    m = tiny()
    x = ids(2, 32)
    one = m(x[:, :16])
    two = m(x, segment_len=16)
    assert not torch.allclose(one.slow_state, two.slow_state)
    # the second segment's doc logits depend on the first segment through the carried state
    alone = m(x[:, 16:])
    assert not torch.allclose(two.per_segment_doc_logits[1], alone.doc_logits)


def test_detached_carry_blocks_gradient_into_first_segment():
    m = tiny()
    x = ids(2, 32)
    captured = []

    def keep(mod, inp, out):  # returns None, so the output is unchanged
        out.retain_grad()
        captured.append(out)

    hook = m.embed.register_forward_hook(keep)
    try:
        for detach in (True, False):
            captured.clear()
            m.zero_grad()
            seed = torch.zeros(2, m.config.slow_dim, requires_grad=True)  # a leaf entering segment 1 only
            out = m(x, slow_seed=seed, segment_len=16, detach_between_segments=detach)
            out.per_segment_doc_logits[1].sum().backward()  # a loss on the second segment only
            emb_grad = captured[0].grad
            first, second = emb_grad[:, :16].abs().sum(), emb_grad[:, 16:].abs().sum()
            assert second > 0
            if detach:
                assert seed.grad is None or seed.grad.abs().sum() == 0
                assert first == 0
            else:
                assert seed.grad.abs().sum() > 0
                assert first > 0
    finally:
        hook.remove()


def test_gate_ablation_runs_and_differs():
    x = ids()
    on, off = tiny(), tiny(gates=False)
    assert not hasattr(off, "gate") and hasattr(on, "gate")
    a, b = on(x), off(x)
    assert torch.isfinite(b.bio_logits).all()
    assert not torch.allclose(a.bio_logits, b.bio_logits)
    assert not torch.allclose(a.doc_logits, b.doc_logits)


def test_thread_memory_seed_changes_doc_logits():
    m = tiny()
    x = ids()
    base = m(x)
    prev = m(ids(seed=9)).memory
    seeded = m(x, slow_seed=m.memory_to_seed(prev) * 10)
    assert not torch.allclose(base.doc_logits, seeded.doc_logits)
    assert not torch.allclose(base.slow_state, seeded.slow_state)
    zero = m(x, slow_seed=torch.zeros(2, m.config.slow_dim))  # a zero seed = no memory
    assert torch.allclose(base.doc_logits, zero.doc_logits)


def test_deterministic():
    x = ids()
    a, b = tiny()(x, segment_len=8), tiny()(x, segment_len=8)
    assert torch.equal(a.bio_logits, b.bio_logits) and torch.equal(a.doc_logits, b.doc_logits)
    assert torch.equal(a.memory, b.memory)


def test_config_json_round_trip_and_presets(tmp_path):
    cfg = get_dlp_config("dlp-tiny", gates=False)
    path = cfg.save(tmp_path / "config.json")
    assert DLPConfig.load(path) == cfg
    base = get_dlp_config("dlp-base")
    assert (base.d, base.n_layers, base.n_heads, base.pool_every, base.slow_blocks) == (384, 8, 6, 64, 2)
    assert (base.slow_dim, base.n_doc_heads, base.n_bio_tags, base.memory_dim) == (384, 4, 21, 256)
    assert 20e6 < meta_param_count(base) < 30e6
    with pytest.raises(DLPConfigError, match="'pool_every'"):
        get_dlp_config("dlp-tiny", pool_every=0)
    with pytest.raises(DLPConfigError, match="unknown field"):
        DLPConfig.from_dict({"nope": 1})


def test_tiny_overfit_drives_bio_and_doc_loss_down():
    torch.manual_seed(0)
    m = DLPModel(get_dlp_config("dlp-tiny"))
    x = ids(2, 32, seed=3)
    g = torch.Generator().manual_seed(4)
    tags = torch.randint(0, 21, (2, 32), generator=g)
    doc = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def loss_fn():
        out = m(x, segment_len=16)
        bio = F.cross_entropy(out.bio_logits.reshape(-1, 21), tags.reshape(-1))
        docl = sum(F.binary_cross_entropy_with_logits(d, doc) for d in out.per_segment_doc_logits)
        return bio + docl

    first = loss_fn().item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.5 * first


def test_mask_positions_replace_the_input_embedding():
    m = tiny()
    a, b = ids(1, 16, seed=1), ids(1, 16, seed=2)
    every = torch.ones(1, 16, dtype=torch.bool)
    # with every position masked, the input ids no longer matter
    assert torch.equal(m(a, mask_positions=every).bio_logits, m(b, mask_positions=every).bio_logits)
    some = torch.zeros(1, 16, dtype=torch.bool)
    some[0, 3] = True
    assert not torch.equal(m(a, mask_positions=some).bio_logits, m(a).bio_logits)
    none = torch.zeros(1, 16, dtype=torch.bool)
    assert torch.equal(m(a, mask_positions=none).bio_logits, m(a).bio_logits)


def test_aux_heads_shapes_and_tied_denoise_head():
    m = tiny()
    out = m(ids(2, 24), segment_len=16)
    assert out.hidden.shape == (2, 24, m.config.d) and out.shuffle_logits.shape == (2,)
    logits = m.denoise_logits(out.hidden[:, :5])
    assert logits.shape == (2, 5, m.config.vocab_size)
    m.zero_grad()
    logits.sum().backward()
    assert m.embed.weight.grad.abs().sum() > 0  # the head is the embedding matrix itself
    assert not any("denoise" in n and p.dim() == 2 for n, p in m.named_parameters())  # no vocab-sized weight


def test_new_presets_are_valid_and_ordered_by_size():
    sizes = [
        meta_param_count(get_dlp_config(n, vocab_size=8000)) for n in ("dlp-small", "dlp-medium", "dlp-base")
    ]
    assert sizes == sorted(sizes) and sizes[0] > 1e6
