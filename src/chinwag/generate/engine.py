"""The inference engine: prefill + incremental decode, continuous batching, streaming, stop handling.

    engine = Engine(model, tok)                                   # or cache="paged"
    [c.text for c in engine.generate(["hi", "hello"], SamplingParams(temperature=0))]
    for d in engine.stream("hi", params): print(d.text, end="")
    rid = engine.add_request(ids, params); while engine.has_work(): events = engine.step()   # the server

How a step runs: if waiting requests fit (a free row in the contiguous cache, enough free blocks in the
paged one), the step admits them and prefills each on its own (one forward over its prompt, which samples
its first token); otherwise every running request advances one token in one batched decode forward.
Requests finish at a stop token, a stop string, max_new_tokens or the context end and leave the batch at
once; their cache rows/blocks go to the next waiting request.

The engine runs its own forward over the model's modules (same weights, same ops) because a batch of
sequences at different positions needs per-row positions and cache lengths, which the model's own
`forward(kv_cache=...)` (one shared start_pos) cannot express.
"""

from __future__ import annotations

import codecs
import copy
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chinwag.generate.sampling import SamplingParams, sample, token_logprobs
from chinwag.model.model import apply_rope, rope_inv_freq

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


# ---- results ---------------------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float  # under the raw model distribution (before temperature / top-k / penalties)
    top: list[tuple[int, float]] = field(default_factory=list)  # the top_logprobs most likely alternatives


@dataclass
class Completion:
    request_id: int
    text: str
    token_ids: list[int]  # every generated token (a stop token id is not included; a stop string's are)
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens or context end)
    logprobs: list[TokenLogprob] | None
    usage: dict  # prompt_tokens, completion_tokens, total_tokens


@dataclass
class Delta:
    """What one step produced for one request. `text` may be "" while bytes of a multi-byte character or
    the possible start of a stop string are held back; the last delta has finish_reason and completion."""

    request_id: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion: Completion | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# ---- attention over a cache ------------------------------------------------------------------------------


def decode_attention(q, k, v, bias):
    """One query per row against its cached keys.

    q [B, H, 1, hd]; k, v [B, n_kv, T, hd] (strided views of the cache are fine); bias [B, 1, 1, T]
    (0 or -inf) or None -> [B, H, 1, hd]. SDPA's CPU kernel reads strided keys directly and shares each
    kv head across its query heads (enable_gqa) without materialising the repeats; a hand-written
    matmul + softmax on the same views was ~10x slower (strided bmm falls off the fast path).
    """
    if k.shape[1] != q.shape[1]:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def prefill_attention(q, k, v):
    """A fresh sequence's causal self-attention (no cached prefix): SDPA's fused kernels."""
    if k.shape[1] != q.shape[1]:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@dataclass
class StepContext:
    """What a forward needs from the cache, computed once per step (not per layer)."""

    seq_ids: list[int]
    prefill: bool
    positions: torch.Tensor  # [B, T] long
    bias: torch.Tensor | None = None  # decode: [B, 1, 1, T] additive key mask
    extra: dict = field(default_factory=dict)  # cache-private indices


class ContiguousKVCache:
    """One row per running sequence: keys/values [n_layers, max_batch, n_kv, capacity, hd].

    Rows are kept compact (a finished sequence's row is filled with the last row's sequence), so the
    running batch is always rows 0..B-1 and decode reads plain slices, never gathers. The time axis grows
    (doubling, up to max_len) when an admitted sequence needs it, so short chats do not pay for the whole
    context.
    """

    kind = "contiguous"

    def __init__(self, cfg, max_batch: int, max_len: int, device=None, dtype=torch.float32):
        self.cfg, self.max_batch, self.max_len = cfg, max_batch, max_len
        self.device, self.dtype = device, dtype
        self.capacity = 0
        self.k = self.v = None
        self.rows: list[int] = []  # row -> seq id
        self.row_of: dict[int, int] = {}
        self.lens: list[int] = []  # per row: cached tokens

    def __repr__(self) -> str:
        return f"ContiguousKVCache({len(self.rows)}/{self.max_batch} rows, capacity {self.capacity})"

    def _grow(self, need: int) -> None:
        cap = min(self.max_len, max(need, 2 * self.capacity, 64))
        c = self.cfg
        shape = (c.n_layers, self.max_batch, c.n_kv_heads, cap, c.head_dim)
        k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v = torch.zeros_like(k)
        if self.k is not None:
            k[:, :, :, : self.capacity] = self.k
            v[:, :, :, : self.capacity] = self.v
        self.k, self.v, self.capacity = k, v, cap

    def can_admit(self, max_total: int) -> bool:
        return len(self.rows) < self.max_batch

    def check_fits(self, max_total: int) -> None:
        if max_total > self.max_len:
            raise ValueError(f"request needs {max_total} cache positions; the cache holds {self.max_len}")

    def add(self, seq_id: int, max_total: int) -> None:
        self.check_fits(max_total)
        if max_total > self.capacity:
            self._grow(max_total)
        self.row_of[seq_id] = len(self.rows)
        self.rows.append(seq_id)
        self.lens.append(0)

    def free(self, seq_id: int) -> None:
        row, last = self.row_of.pop(seq_id), len(self.rows) - 1
        if row != last:  # move the last row's sequence into the hole
            n = self.lens[last]
            self.k[:, row, :, :n] = self.k[:, last, :, :n]
            self.v[:, row, :, :n] = self.v[:, last, :, :n]
            moved = self.rows[last]
            self.rows[row], self.lens[row], self.row_of[moved] = moved, self.lens[last], row
        self.rows.pop()
        self.lens.pop()

    def order(self, seq_ids: Sequence[int]) -> list[int]:
        return sorted(seq_ids, key=self.row_of.__getitem__)

    def num_seqs(self) -> int:
        return len(self.rows)

    def begin(self, seq_ids: list[int], n_new: int) -> StepContext:
        dev = self.device
        if n_new > 1 or self.lens[self.row_of[seq_ids[0]]] == 0:  # prefill of one fresh sequence
            (sid,) = seq_ids
            pos = torch.arange(n_new, device=dev)[None]
            return StepContext(seq_ids, True, pos, extra={"row": self.row_of[sid], "n": n_new})
        rows = [self.row_of[s] for s in seq_ids]
        B = len(rows)
        lens = [self.lens[r] for r in rows]
        T = max(lens) + 1
        lens_t = torch.tensor(lens, device=dev)
        bias = None
        if min(lens) != max(lens):  # rows at different lengths: mask each row's unwritten tail
            valid = torch.arange(T, device=dev)[None] <= lens_t[:, None]
            bias = torch.zeros(B, 1, 1, T, device=dev, dtype=self.dtype)
            bias.masked_fill_(~valid[:, None, None], float("-inf"))
        extra = {"T": T, "B": B, "pos": lens_t, "same": bias is None, "L0": lens[0]}
        if rows == list(range(B)):
            extra["rows"] = None
        else:  # only when a caller decodes a subset: gather (slower, same values)
            extra["rows"] = torch.tensor(rows, device=dev)
        extra["ar"] = torch.arange(B, device=dev)
        return StepContext(seq_ids, False, lens_t[:, None], bias, extra)

    def attend(self, layer: int, q, k, v, ctx: StepContext):
        e = ctx.extra
        if ctx.prefill:
            row, n = e["row"], e["n"]
            self.k[layer, row, :, :n] = k[0]
            self.v[layer, row, :, :n] = v[0]
            return prefill_attention(q, k, v)
        B, T, rows = e["B"], e["T"], e["rows"]
        kc, vc = self.k[layer], self.v[layer]
        if rows is None:
            kc, vc = kc[:B], vc[:B]
            if e["same"]:  # every row at the same position: a slice write
                L0 = e["L0"]
                kc[:, :, L0 : L0 + 1] = k
                vc[:, :, L0 : L0 + 1] = v
            else:
                kc[e["ar"], :, e["pos"]] = k[:, :, 0]
                vc[e["ar"], :, e["pos"]] = v[:, :, 0]
            return decode_attention(q, kc[:, :, :T], vc[:, :, :T], ctx.bias)
        kc[rows, :, e["pos"]] = k[:, :, 0]
        vc[rows, :, e["pos"]] = v[:, :, 0]
        return decode_attention(q, kc[rows, :, :T], vc[rows, :, :T], ctx.bias)

    def commit(self, ctx: StepContext) -> None:
        n = ctx.positions.shape[1]
        for s in ctx.seq_ids:
            self.lens[self.row_of[s]] += n


# ---- requests --------------------------------------------------------------------------------------------


class _Request:
    def __init__(self, rid, prompt, params, budget, stop_ids, generator):
        self.id, self.prompt, self.params, self.budget = rid, prompt, params, budget
        self.stop_ids, self.gen = stop_ids, generator
        self.out: list[int] = []
        self.last: int | None = None  # sampled but not yet in the cache
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far (complete characters only)
        self.emitted = 0  # chars of text already sent
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs else None
        self.finish_reason: str | None = None
        self.max_stop = max((len(s) for s in params.stop), default=0)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# ---- the engine ------------------------------------------------------------------------------------------


def quantize_int8(model, scheme: str = "int8"):
    """A copy of `model` whose Linear layers hold int8 weights (dynamic activation quantisation, fbgemm).

    Batch-1 decode on a CPU is bound by reading every weight once per token: int8 weights are a quarter
    of fp32's bytes, so the matmuls run ~3.5x faster on this kind of machine. Logits move slightly (see
    tests); the caller's model is untouched.
    """
    import warnings

    if scheme != "int8":
        raise ValueError(f"quantize must be 'int8' or None, got {scheme!r}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize='int8' is a CPU decode path (fbgemm); use dtype=bfloat16 on GPUs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao says "use torchao"; this API still works
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).float(), {torch.nn.Linear}, dtype=torch.qint8
        )


class Engine:
    """Batched, streaming generation over one model. Not thread-safe: one caller drives `step()`."""

    def __init__(
        self,
        model,
        tokenizer=None,
        cache: str = "contiguous",
        max_batch: int = 32,
        block_size: int = 16,
        dtype: torch.dtype | str | None = None,
        compile: bool = False,
        threads: int | None = None,
        num_blocks: int | None = None,
        max_len: int | None = None,
        quantize: str | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
        p = next(model.parameters())
        if dtype is not None and dtype != p.dtype:  # a cast copy: the caller's model stays as it was
            model = copy.deepcopy(model).to(dtype)
        if quantize is not None:
            model = quantize_int8(model, quantize)
        self.model = model.eval()
        self.tok = tokenizer
        self.cfg = cfg = model.config
        self.device = p.device
        self.dtype = next(model.parameters()).dtype
        self.max_batch = max_batch
        self.max_len = max_len or cfg.max_seq_len
        if cache == "contiguous":
            self.cache = ContiguousKVCache(cfg, max_batch, self.max_len, self.device, self.dtype)
        elif cache == "paged":
            from chinwag.generate.paged import PagedKVCache

            if num_blocks is None:  # enough for every row at full context (pass fewer to share memory)
                num_blocks = max_batch * -(-self.max_len // block_size)
            self.cache = PagedKVCache(cfg, num_blocks, block_size, max_batch, self.device, self.dtype)
        else:
            raise ValueError(f"cache must be 'contiguous' or 'paged', got {cache!r}")
        self.default_stop_ids: set[int] = set()
        if tokenizer is not None:
            for name in ("<|end|>", "<|eos|>"):
                try:
                    self.default_stop_ids.add(tokenizer.special_id(name))
                except (KeyError, AttributeError):
                    pass
        self._rope_table = self._make_rope_table()
        self._next_id = 0
        self.waiting: deque[_Request] = deque()
        self.running: dict[int, _Request] = {}
        self.stats = {"prefill_tokens": 0, "decode_tokens": 0, "decode_steps": 0}
        self._layers_fn = self._layers
        if compile:
            # dynamic: batch size and key length change every step; one graph serves them all
            self._layers_fn = torch.compile(self._layers, dynamic=True)

    # ---- forward -----------------------------------------------------------------------------------------
    def _make_rope_table(self):
        """cos/sin for every position, computed exactly as the model's Rotary does (so outputs match)."""
        cfg = self.cfg
        rs = cfg.rope_scaling or {}
        if cfg.position != "rope" or cfg.learnable_rope_freqs or rs.get("type") == "dynamic":
            return None  # dynamic/learnable: ask the model's Rotary every step
        inv_freq, scale = rope_inv_freq(cfg)
        pos = torch.arange(self.max_len, device=self.device)
        freqs = pos[:, None].float() * inv_freq.to(self.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(self.dtype), (emb.sin() * scale).to(self.dtype)

    def _rope(self, positions):
        if self.cfg.position != "rope":
            return None
        if self._rope_table is None:
            return self.model.model.rotary_emb(positions, self.dtype)
        cos, sin = self._rope_table
        return cos[positions][:, None], sin[positions][:, None]

    def _layers(self, ids, rope, ctx: StepContext):
        m, cfg = self.model, self.cfg
        B, T = ids.shape
        H, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        x = m.model.embed_tokens(ids)
        if cfg.position == "learned":
            x = x + m.model.embed_positions(ctx.positions)
        for layer in m.model.layers:
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, T, H, hd).transpose(1, 2)
            k = a.k_proj(h).view(B, T, nkv, hd).transpose(1, 2)
            v = a.v_proj(h).view(B, T, nkv, hd).transpose(1, 2)
            if cfg.qk_norm:
                q, k = a.q_norm(q), a.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            y = self.cache.attend(layer.idx, q, k, v, ctx)
            x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        # only the last position's logits are ever needed: skip the lm_head for the rest of a prompt
        return m.lm_head(m.model.norm(x[:, -1]))

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, seq_ids: list[int]) -> torch.Tensor:
        """ids [B, T] for seq_ids -> next-token logits [B, V]; appends to the cache."""
        ctx = self.cache.begin(seq_ids, ids.shape[1])
        fn = self._layers if ctx.prefill else self._layers_fn
        logits = fn(ids, self._rope(ctx.positions), ctx)
        self.cache.commit(ctx)
        return logits

    # ---- requests ----------------------------------------------------------------------------------------
    def add_request(
        self, prompt: Sequence[int] | str, params: SamplingParams | None = None, request_id: int | None = None
    ) -> int:
        """Queue a request; it joins the running batch at the next `step()` with room. Returns its id."""
        params = params or SamplingParams()
        params.validate()
        if isinstance(prompt, str):
            if self.tok is None:
                raise ValueError("a text prompt needs the engine to have a tokenizer")
            prompt = self.tok.encode(prompt)
        prompt = [int(i) for i in prompt]
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the model's context is {self.max_len}")
        V = self.cfg.vocab_size
        if min(prompt) < 0 or max(prompt) >= V:
            raise ValueError(f"prompt holds token ids outside the vocabulary (size {V})")
        if params.logit_bias and (max(params.logit_bias) >= V or min(params.logit_bias) < 0):
            raise ValueError(f"sampling field 'logit_bias': token id outside the vocabulary (size {V})")
        if params.stop and self.tok is None:
            raise ValueError("sampling field 'stop': stop strings need the engine to have a tokenizer")
        budget = min(params.max_new_tokens, self.max_len - len(prompt))
        # the last sampled token never enters the cache, so a request needs prompt + budget - 1 positions
        self.cache.check_fits(len(prompt) + budget)
        rid = self._next_id if request_id is None else int(request_id)
        if rid in self.running or any(r.id == rid for r in self.waiting):
            raise ValueError(f"request id {rid} is already in use")
        self._next_id = max(self._next_id, rid) + 1
        if params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        else:  # follows torch.manual_seed, so unseeded runs are reproducible under a global seed
            gen = torch.Generator(device=self.device).manual_seed(int(torch.randint(2**62, ())))
        stop_ids = self.default_stop_ids | set(params.stop_token_ids)
        self.waiting.append(_Request(rid, prompt, params, budget, stop_ids, gen))
        return rid

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: int) -> None:
        """Drop a request (waiting or running) without an event, freeing its cache."""
        self.waiting = deque(r for r in self.waiting if r.id != request_id)
        if request_id in self.running:
            del self.running[request_id]
            self.cache.free(request_id)

    def step(self) -> list[Delta]:
        """Admit and prefill what fits (returning their first tokens), or else advance every running
        request by one token in one batched forward."""
        events: list[Delta] = []
        while self.waiting:
            r = self.waiting[0]
            if not self.cache.can_admit(len(r.prompt) + r.budget):
                break
            self.waiting.popleft()
            self.cache.add(r.id, len(r.prompt) + r.budget)
            self.running[r.id] = r
            ids = torch.tensor([r.prompt], device=self.device)
            logits = self._forward(ids, [r.id])
            self.stats["prefill_tokens"] += len(r.prompt)
            events += self._accept([r], logits)
        if self.waiting and not self.running:  # nothing will ever free room: fail loudly, never hang
            r = self.waiting[0]
            raise RuntimeError(f"request {r.id} does not fit in an empty cache ({self.cache!r})")
        if events:  # a prefill step: return the first tokens now (time to first token = one step)
            return events
        reqs = [self.running[s] for s in self.cache.order([r.id for r in self.running.values()])]
        if reqs:
            ids = torch.tensor([[r.last] for r in reqs], device=self.device)
            logits = self._forward(ids, [r.id for r in reqs])
            self.stats["decode_tokens"] += len(reqs)
            self.stats["decode_steps"] += 1
            events += self._accept(reqs, logits)
        return events

    def _accept(self, reqs: list[_Request], logits: torch.Tensor) -> list[Delta]:
        """Sample one token per request, update text/stop state, retire finished requests."""
        ps = [r.params for r in reqs]
        history = [r.out for r in reqs] if any(p.uses_history() for p in ps) else None
        toks = sample(logits, ps, history, [r.gen for r in reqs])
        lps = None
        if any(p.logprobs for p in ps):
            k = max(p.top_logprobs for p in ps)
            chosen, top_ids, top_lps = token_logprobs(logits, toks, k)
            lps = (chosen.tolist(), top_ids.tolist(), top_lps.tolist())
        events = []
        for i, (r, t) in enumerate(zip(reqs, toks.tolist(), strict=True)):
            lp = None
            if lps is not None and r.params.logprobs:
                n = r.params.top_logprobs
                lp = TokenLogprob(t, lps[0][i], list(zip(lps[1][i][:n], lps[2][i][:n], strict=True)))
            events.append(self._append(r, t, lp))
        return events

    def _append(self, r: _Request, t: int, lp: TokenLogprob | None) -> Delta:
        new_ids, new_lps = [], None
        if t in r.stop_ids:
            r.finish_reason = "stop"
        else:
            r.out.append(t)
            r.last = t
            new_ids = [t]
            if lp is not None:
                r.logprobs.append(lp)
                new_lps = [lp]
            if self.tok is not None:
                r.text += r.dec.decode(self.tok.token_bytes(t))
            if len(r.out) >= r.budget:
                r.finish_reason = "length"
        if r.finish_reason is not None and self.tok is not None:
            r.text += r.dec.decode(b"", final=True)  # a dangling partial character becomes U+FFFD
        end = len(r.text)
        if r.params.stop:
            # search only where a new match can start: the tail that could overlap the last piece
            lo = max(0, r.emitted - r.max_stop)
            hits = [i for i in (r.text.find(s, lo) for s in r.params.stop) if i >= 0]
            if hits:
                end = min(hits)
                r.text = r.text[:end]
                r.finish_reason = "stop"
            elif r.finish_reason is None:
                end -= _held_back(r.text, r.params.stop)
        end = max(end, r.emitted)
        delta = Delta(r.id, r.text[r.emitted : end], new_ids, new_lps)
        r.emitted = end
        if r.finish_reason is not None:
            delta.finish_reason = r.finish_reason
            delta.completion = self._finish(r)
        return delta

    def _finish(self, r: _Request) -> Completion:
        del self.running[r.id]
        self.cache.free(r.id)
        n = len(r.out)
        usage = {"prompt_tokens": len(r.prompt), "completion_tokens": n, "total_tokens": len(r.prompt) + n}
        return Completion(r.id, r.text, list(r.out), r.finish_reason, r.logprobs, usage)

    # ---- conveniences ------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int] | str] | str,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Run prompts to completion (batched, max_batch at a time) and return them in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        done: dict[int, Completion] = {}
        want = set(ids)
        while want - done.keys():
            for ev in self.step():
                if ev.completion is not None and ev.request_id in want:
                    done[ev.request_id] = ev.completion
        return [done[i] for i in ids]

    def stream(self, prompt: Sequence[int] | str, params: SamplingParams | None = None) -> Iterator[Delta]:
        """Yield this request's deltas as they come (other queued requests advance alongside)."""
        rid = self.add_request(prompt, params)
        try:
            while True:
                for ev in self.step():
                    if ev.request_id == rid:
                        yield ev
                        if ev.finished:
                            return
        finally:  # the consumer stopped early: free the request's cache
            self.abort(rid)
