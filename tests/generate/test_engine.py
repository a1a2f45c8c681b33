"""The engine on a tiny model: cached == uncached, batched == alone, continuous batching, seeds, stops,
log-probs and UTF-8-safe streaming."""

from __future__ import annotations

import pytest
import torch

from chinwag.generate.engine import Engine
from chinwag.generate.sampling import SamplingParams
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config
from chinwag.tokenizer import Tokenizer
from chinwag.tokenizer.train import train_bpe

TEXT = (
    "hello there! how are you doing today? i am fine, thanks. what did you do this weekend? "
    "we went hiking by the lake and saw a heron. café, naïve, 東京, emoji 🙂 too.\n"
) * 20
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
CACHES = ["contiguous", "paged"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe([TEXT], vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def model(tok) -> ChinwagLM:
    torch.manual_seed(0)
    # a larger init than training uses, so a random model's greedy output varies from token to token
    cfg = get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=96, init_std=0.2)
    return ChinwagLM(cfg).eval()


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    texts = ["hello there! how are", "we", "what did you do this weekend? we went hiking", "café"]
    return [tok.encode(t) for t in texts]


def make(model, tok, cache="contiguous", **kw) -> Engine:
    if cache == "paged":
        kw.setdefault("block_size", 4)
    return Engine(model, tok, cache=cache, **kw)


def no_stop(**kw) -> SamplingParams:
    """Greedy without the default <|end|>/<|eos|> stop, so runs have a known length."""
    return SamplingParams(**{"temperature": 0, "max_new_tokens": 12, **kw})


def alone(model, tok, prompt, params, cache="contiguous"):
    return make(model, tok, cache).generate([prompt], params)[0]


def full_forward_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1]


# ---- correctness of the cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHES)
def test_cached_decode_equals_uncached_forward(model, tok, prompts, cache):
    """Every greedy token is the argmax of a fresh full forward, and its log-prob matches."""
    c = make(model, tok, cache).generate([prompts[0]], no_stop(logprobs=True, top_logprobs=2))[0]
    assert len(c.token_ids) == 12 and len(set(c.token_ids)) > 2
    ids = list(prompts[0])
    for t, lp in zip(c.token_ids, c.logprobs, strict=True):
        ref = torch.log_softmax(full_forward_logits(model, ids), -1)
        assert int(ref.argmax()) == t
        assert lp.logprob == pytest.approx(float(ref[t]), abs=1e-4)
        assert [i for i, _ in lp.top] == ref.topk(2).indices.tolist()
        ids.append(t)


@pytest.mark.parametrize("cache", CACHES)
def test_batched_equals_one_by_one(model, tok, prompts, cache):
    # different prompt lengths and different stopping points (max_new_tokens per request)
    params = [no_stop(max_new_tokens=n) for n in (12, 5, 9, 1)]
    batched = make(model, tok, cache).generate(prompts, params)
    for p, sp_, c in zip(prompts, params, batched, strict=True):
        one = alone(model, tok, p, sp_)
        assert c.token_ids == one.token_ids and c.text == one.text
        assert len(c.token_ids) == sp_.max_new_tokens and c.finish_reason == "length"
        assert c.usage == {"prompt_tokens": len(p), "completion_tokens": len(c.token_ids),
                           "total_tokens": len(p) + len(c.token_ids)}  # fmt: skip


@pytest.mark.parametrize("cache", CACHES)
def test_continuous_batching_join_midway(model, tok, prompts, cache):
    """A request joining a running batch (and one leaving it early) gets the same output as alone."""
    eng = make(model, tok, cache, max_batch=3)
    params = [no_stop(max_new_tokens=n) for n in (14, 4, 10, 8)]
    out: dict[int, list[int]] = {}
    a = eng.add_request(prompts[0], params[0])
    b = eng.add_request(prompts[1], params[1])
    for _ in range(3):
        eng.step()
    c = eng.add_request(prompts[2], params[2])  # joins mid-way
    d = eng.add_request(prompts[3], params[3])  # waits for a free row (max_batch=3) after b leaves
    while eng.has_work():
        for ev in eng.step():
            if ev.completion:
                out[ev.request_id] = ev.completion.token_ids
    for rid, i in zip((a, b, c, d), range(4), strict=True):
        assert out[rid] == alone(model, tok, prompts[i], params[i]).token_ids, f"request {i}"
    assert eng.cache.num_seqs() == 0


def test_more_prompts_than_max_batch_are_queued(model, tok, prompts):
    many = [prompts[i % 4] for i in range(7)]
    outs = make(model, tok, max_batch=2).generate(many, no_stop(max_new_tokens=4))
    assert [c.token_ids for c in outs] == [
        c.token_ids for c in make(model, tok).generate(many, no_stop(max_new_tokens=4))
    ]


def test_bf16_engine_runs_and_leaves_the_model_alone(model, tok, prompts):
    c = make(model, tok, dtype=torch.bfloat16).generate([prompts[0]], no_stop(max_new_tokens=6))[0]
    assert len(c.token_ids) == 6
    assert next(model.parameters()).dtype == torch.float32


# ---- sampling through the engine -------------------------------------------------------------------------


def test_seeded_sampling_reproducible_and_independent_of_batch(model, tok, prompts):
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=15, seed=11)
    solo = alone(model, tok, prompts[0], p)
    again = alone(model, tok, prompts[0], p)
    assert solo.token_ids == again.token_ids
    mates = [SamplingParams(temperature=0.9, max_new_tokens=7, seed=s) for s in (1, 2)]
    batched = make(model, tok).generate([prompts[1], prompts[0], prompts[2]], [mates[0], p, mates[1]])
    assert batched[1].token_ids == solo.token_ids and batched[1].text == solo.text
    other = alone(
        model, tok, prompts[0], SamplingParams(temperature=1.0, top_k=0, max_new_tokens=15, seed=12)
    )
    assert other.token_ids != solo.token_ids


def test_default_stop_at_end_token(model, tok, prompts):
    # logit bias makes <|end|> the only choice: generation stops at once, the stop id is not returned
    c = alone(model, tok, prompts[0], SamplingParams(temperature=0, logit_bias={tok.end_id: 1e4}))
    assert c.token_ids == [] and c.finish_reason == "stop" and c.text == ""


def test_stop_token_ids(model, tok, prompts):
    full = alone(model, tok, prompts[0], no_stop())
    stop = full.token_ids[4]
    c = alone(model, tok, prompts[0], no_stop(stop_token_ids=[stop]))
    assert c.token_ids == full.token_ids[: full.token_ids.index(stop)] and c.finish_reason == "stop"


def test_stop_string_cut_exactly_even_across_tokens(model, tok, prompts):
    full = alone(model, tok, prompts[2], no_stop(max_new_tokens=20))
    pieces = [tok.decode([t]) for t in full.token_ids]
    # a stop string made of the end of one token and the start of the next
    i = next(i for i in range(3, len(pieces) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[i][-1:] + pieces[i + 1][:1]
    cut = full.text.find(stop)
    params = no_stop(max_new_tokens=20, stop=[stop, "never appears"])
    c = alone(model, tok, prompts[2], params)
    assert c.text == full.text[:cut] and c.finish_reason == "stop"
    deltas = list(make(model, tok).stream(prompts[2], params))
    assert "".join(d.text for d in deltas) == full.text[:cut]
    assert deltas[-1].finished and deltas[-1].finish_reason == "stop"


def test_max_new_tokens_and_context_end_finish_with_length(model, tok, prompts):
    c = alone(model, tok, prompts[0], no_stop(max_new_tokens=3))
    assert len(c.token_ids) == 3 and c.finish_reason == "length"
    long_prompt = tok.encode(TEXT)[:90]  # context is 96
    c = alone(model, tok, long_prompt, no_stop(max_new_tokens=50))
    assert len(c.token_ids) == 6 and c.finish_reason == "length"
    with pytest.raises(ValueError, match="context"):
        make(model, tok).add_request(tok.encode(TEXT)[:96], no_stop())


def test_bad_requests_are_refused(model, tok):
    eng = make(model, tok)
    with pytest.raises(ValueError, match="empty"):
        eng.add_request([], no_stop())
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request([10**6], no_stop())
    with pytest.raises(ValueError, match="top_p"):
        eng.add_request([1, 2], SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="stop"):
        Engine(model, None).add_request([1, 2], SamplingParams(stop=["x"]))


def test_stream_deltas_add_up_to_the_completion(model, tok, prompts):
    p = no_stop(max_new_tokens=10, logprobs=True)
    deltas = list(make(model, tok).stream(prompts[0], p))
    done = deltas[-1].completion
    assert "".join(d.text for d in deltas) == done.text
    assert [t for d in deltas for t in d.token_ids] == done.token_ids
    assert sum(len(d.logprobs or []) for d in deltas) == len(done.logprobs) == 10
    assert not any(d.finished for d in deltas[:-1])


# ---- UTF-8 and stop strings on a scripted model ----------------------------------------------------------


def scripted(tok: Tokenizer, chain: list[int]) -> ChinwagLM:
    """A model whose greedy continuation of chain[i] is chain[i + 1] (then <|end|>), whatever came before.

    All attention and MLP outputs are zeroed, so the last hidden state is the normed embedding of the last
    token; an untied lm_head row for chain[i + 1] set to that vector makes it the argmax (its own dot
    product, d, beats random cross terms ~ sqrt(d)).
    """
    assert len(set(chain)) == len(chain)
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=96, tie_embeddings=False)
    m = ChinwagLM(cfg).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        e = m.model.embed_tokens.weight
        x = e / e.pow(2).mean(-1, keepdim=True).add(cfg.norm_eps).sqrt()
        m.lm_head.weight.zero_()
        for a, b in zip(chain, chain[1:] + [tok.end_id], strict=True):
            m.lm_head.weight[b] = x[a]
    return m


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    return [tok.ranks[bytes([b])] for b in text.encode()]


def test_streaming_never_splits_utf8_cjk_and_emoji(tok):
    text = "a東京🙂é"
    chain = byte_ids(tok, text)  # every multi-byte character arrives one byte per token
    deltas = list(Engine(scripted(tok, chain), tok).stream(chain[:1], SamplingParams(temperature=0)))
    assert deltas[-1].finish_reason == "stop"  # reached <|end|>
    pieces = [d.text for d in deltas if d.text]
    assert "".join(pieces) == text[1:]
    assert pieces == ["東", "京", "🙂", "é"]  # each character appears whole, once its last byte arrives
    assert len(deltas) == len(chain)  # one delta per byte token (+ the stop): most are empty


def test_stop_string_held_back_until_it_cannot_match(tok):
    text = "abcdefg"
    chain = byte_ids(tok, text)
    m = scripted(tok, chain)
    p = SamplingParams(temperature=0, stop=["cdX"])
    deltas = list(Engine(m, tok).stream(chain[:1], p))
    texts = [d.text for d in deltas]
    assert "".join(texts) == "bcdefg"
    assert texts[:4] == ["b", "", "", "cde"]  # "c", then "cd" held back (could start "cdX")
    c = Engine(m, tok).generate([chain[:1]], SamplingParams(temperature=0, stop=["de", "ef"]))[0]
    assert c.text == "bc" and c.finish_reason == "stop"
    assert c.token_ids == chain[1:5]  # the tokens that completed the stop string stay in token_ids
    c = Engine(m, tok).generate([chain[:1]], SamplingParams(temperature=0, stop=["fg"], max_new_tokens=5))[0]
    assert c.text == "bcdef" and c.finish_reason == "length"  # "f" was held back, then released


@pytest.mark.slow
def test_compiled_decode_matches_eager(model, tok, prompts):
    p = no_stop(max_new_tokens=6)
    eager = make(model, tok).generate(prompts[:2], p)
    compiled = make(model, tok, compile=True).generate(prompts[:2], p)
    assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]
