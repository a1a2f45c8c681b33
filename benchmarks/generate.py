"""Generation speed of the chinwag engine vs Hugging Face transformers `generate`, same weights.

For each preset: a random-init model (speed does not depend on the weights), exported with
`chinwag.export.hf.export_hf` and loaded as `LlamaForCausalLM`. Prompts are `--prompt-len` random tokens,
every request generates exactly `--new-tokens` (greedy, no stop tokens). Figures:

  decode_tok_s_b1     batch-1 decode tokens/s (after the first token)
  hf_decode_tok_s_b1  the same with transformers generate(do_sample=False, use_cache=True)
  prefill_tok_s       prompt tokens/s of one prefill
  ttft_ms             time to first token (prefill + first sample), batch 1
  aggregate_tok_s_bN  generated tokens/s over a whole batch of N concurrent requests (prefills included)

    python benchmarks/generate.py [--threads 2] [--presets small,aeron-small] [--new-tokens 256]
                                  [--dtype float32|bfloat16] [--cache contiguous|paged] [--int8]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def build(preset: str, vocab: int | None, folder: Path):
    from chinwag.export.hf import export_hf
    from chinwag.model.io import save_model
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config

    torch.manual_seed(0)
    over = {"vocab_size": vocab} if vocab else {}
    model = ChinwagLM(get_config(preset, **over)).eval()
    save_model(model, folder / "run")
    export_hf(folder / "run", folder / "hf", tokenizer=False)
    return model


def bench_ours(model, args, prompts, quantize=None, batches=None) -> dict:
    from chinwag.generate.engine import Engine
    from chinwag.generate.sampling import SamplingParams

    dtype = torch.bfloat16 if args.dtype == "bfloat16" and not quantize else None
    n = args.new_tokens
    p = SamplingParams(temperature=0, max_new_tokens=n)
    batches = args.batches if batches is None else batches
    eng = Engine(
        model,
        None,
        cache=args.cache,
        max_batch=max(batches + [1]),
        dtype=dtype,
        compile=args.compile,
        quantize=quantize,
    )
    eng.generate([prompts[0]], SamplingParams(temperature=0, max_new_tokens=8))  # warm-up (allocations)
    # batch 1: the first step is the prefill (-> first token), the rest are decode steps
    best_ttft, best_dec = float("inf"), 0.0
    for _ in range(args.repeats):
        eng.add_request(prompts[0], p)
        t0 = time.perf_counter()
        eng.step()
        t1 = time.perf_counter()
        while eng.has_work():
            eng.step()
        t2 = time.perf_counter()
        best_ttft = min(best_ttft, t1 - t0)
        best_dec = max(best_dec, (n - 1) / (t2 - t1))
    out = {
        "decode_tok_s_b1": best_dec,
        "prefill_tok_s": len(prompts[0]) / best_ttft,
        "ttft_ms": best_ttft * 1e3,
    }
    for b in batches:
        t0 = time.perf_counter()
        res = eng.generate(prompts[:b], p)
        dt = time.perf_counter() - t0
        assert all(len(c.token_ids) == n for c in res)
        out[f"aggregate_tok_s_b{b}"] = b * n / dt
    return out


def bench_hf(folder: Path, args, prompts) -> dict:
    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        return {}
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    hf = LlamaForCausalLM.from_pretrained(folder / "hf", dtype=dtype).eval()
    ids = torch.tensor([prompts[0]])
    n = args.new_tokens
    kw = dict(do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)

    def run(k):
        t = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=k, min_new_tokens=k, **kw)
        assert out.shape[1] == ids.shape[1] + k
        return time.perf_counter() - t

    run(8)  # warm-up
    best_first, best_dec = float("inf"), 0.0
    for _ in range(args.repeats):
        t1 = run(1)
        tn = run(n)
        best_first = min(best_first, t1)
        best_dec = max(best_dec, (n - 1) / max(tn - t1, 1e-9))
    return {"hf_decode_tok_s_b1": best_dec, "hf_ttft_ms": best_first * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default="small", help="comma-separated model presets")
    ap.add_argument("--vocab-size", type=int, default=None, help="override the presets' vocab_size")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", default="8,32", help="batch sizes for the aggregate figure")
    ap.add_argument("--repeats", type=int, default=1, help="batch-1 repeats (best is kept)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--cache", choices=["contiguous", "paged"], default="contiguous")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers column")
    ap.add_argument("--int8", action="store_true", help="also time batch-1 decode with int8 weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures (per preset) to this file")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"load avg {load:.2f}, dtype={args.dtype}, cache={args.cache}, compile={args.compile}, "
        f"prompt {args.prompt_len}, new {args.new_tokens}"
    )
    results = {}
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as d:
            model = build(preset, args.vocab_size, Path(d))
            g = torch.Generator().manual_seed(args.seed)
            V = model.config.vocab_size
            prompts = torch.randint(0, V, (max(args.batches + [1]), args.prompt_len), generator=g).tolist()
            r = bench_ours(model, args, prompts)
            if args.int8:  # the same engine with int8 weights: batch 1 is weight-bandwidth bound on a CPU
                q = bench_ours(model, args, prompts, quantize="int8", batches=[])
                r["decode_tok_s_b1_int8"] = q["decode_tok_s_b1"]
            if not args.no_hf:
                r.update(bench_hf(Path(d), args, prompts))
        r["params_M"] = model.num_params() / 1e6
        r["vocab_size"] = V
        results[preset] = r
    rows = [
        ("decode tok/s, batch 1", "decode_tok_s_b1"),
        ("decode tok/s, batch 1, int8 weights (--int8)", "decode_tok_s_b1_int8"),
        ("transformers decode tok/s, batch 1", "hf_decode_tok_s_b1"),
        ("prefill tok/s", "prefill_tok_s"),
        ("time to first token (ms)", "ttft_ms"),
        *[(f"aggregate tok/s, batch {b}", f"aggregate_tok_s_b{b}") for b in args.batches],
    ]
    names = list(results)
    head = [f"{n} ({results[n]['params_M']:.1f} M, V={results[n]['vocab_size']})" for n in names]
    print("\n| metric | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(names))
    for label, key in rows:
        cells = [f"{results[n][key]:.1f}" if key in results[n] else "n/a" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for n in names:
        r = results[n]
        if "hf_decode_tok_s_b1" in r:
            print(
                f"{n}: batch-1 decode vs transformers: {r['decode_tok_s_b1'] / r['hf_decode_tok_s_b1']:.2f}x"
                f" (same dtype)"
            )
            if "decode_tok_s_b1_int8" in r:
                ratio = r["decode_tok_s_b1_int8"] / r["hf_decode_tok_s_b1"]
                print(f"{n}: batch-1 decode with int8 weights vs transformers at {args.dtype}: {ratio:.2f}x")
        if f"aggregate_tok_s_b{max(args.batches)}" in r:
            ratio = r[f"aggregate_tok_s_b{max(args.batches)}"] / r["decode_tok_s_b1"]
            print(f"{n}: aggregate at batch {max(args.batches)} vs our batch 1: {ratio:.2f}x")
    if args.json:
        from chinwag.utils import write_json

        meta = {"threads": args.threads, "load_avg": load, "dtype": args.dtype, "cache": args.cache}
        meta.update(prompt_len=args.prompt_len, new_tokens=args.new_tokens, compile=args.compile)
        write_json(args.json, {"meta": meta, "results": results})
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
