"""Training throughput (tokens/s) and MFU for the `tiny` and `small` presets, fp32 vs bf16 autocast.

MFU is measured against this machine's own matmul peak, measured in the same run (a large square matmul
in each dtype), so the ratio is meaningful on a noisy shared box. One training step = forward, backward
and an AdamW update on random tokens (data loading is not what we measure here).

    python benchmarks/train_throughput.py [--threads 2] [--steps 8] [--presets tiny,small]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """Best-of-reps FLOP/s of an n x n x n matmul in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def bench_train(preset: str, dtype: str, batch: int, seq: int, steps: int) -> dict:
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config

    torch.manual_seed(0)
    cfg = get_config(preset, max_seq_len=seq)
    model = ChinwagLM(cfg)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randint(0, cfg.vocab_size, (batch, seq))
    y = torch.randint(0, cfg.vocab_size, (batch, seq))
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bf16"
        else torch.autocast("cpu", enabled=False)
    )

    def step():
        with ctx:
            _, loss = model(x, targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    dt = times[len(times) // 2]  # median: robust to a noisy neighbour
    tok_s = batch * seq / dt
    flops_tok = model.estimate_flops_per_token(seq)
    return {
        "preset": preset,
        "params": model.num_params(),
        "dtype": dtype,
        "tokens_per_s": tok_s,
        "achieved_flops": tok_s * flops_tok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for preset in args.presets.split(","):
        for dtype in ("fp32", "bf16"):
            r = bench_train(preset, dtype, args.batch, args.seq, args.steps)
            r["mfu"] = r["achieved_flops"] / peaks[dtype]
            rows.append(r)

    print(
        f"# train_throughput  torch {torch.__version__}  threads={args.threads}  "
        f"batch={args.batch} seq={args.seq}  cpu={platform.processor() or platform.machine()}"
    )
    print(
        f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s "
        f"(2048^3, best of 6)\n"
    )
    print("| preset | params | dtype | tokens/s | GFLOP/s | MFU | bf16 speed-up |")
    print("|---|---:|---|---:|---:|---:|---:|")
    base = {}
    for r in rows:
        key = r["preset"]
        if r["dtype"] == "fp32":
            base[key] = r["tokens_per_s"]
        speed = r["tokens_per_s"] / base[key]
        print(
            f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['dtype']} | {r['tokens_per_s']:,.0f} | "
            f"{r['achieved_flops'] / 1e9:.1f} | {r['mfu']:.1%} | {speed:.2f}x |"
        )


if __name__ == "__main__":
    main()
