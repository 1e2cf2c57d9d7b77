#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention on the shapes of our CUDA benchmark rows and prints both
side by side. Reads the JSON lines that `rw_bench_kernels --cuda --json FILE` wrote (same run, same GPU).

    python3 bench/sdpa_reference.py OUR_ROWS.jsonl [--markdown OUT.md]

FLOPs are counted as in our benchmark: forward 4*S*S*D*H (causal: S*(S+1)/2 pairs instead of S*S),
backward 2.5x forward.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

try:  # PyTorch >= 2.3: pin the flash backend, the peer the issue names; older ones pick their own
    from torch.nn.attention import SDPBackend, sdpa_kernel
    BACKEND = "flash"
except ImportError:
    sdpa_kernel = None
    BACKEND = "default"


def flops(s, d, h, causal):
    pairs = s * (s + 1) / 2 if causal else s * s
    return 4.0 * pairs * d * h


def gpu_seconds(fn, reps=7, inner=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)


def sdpa_row(s, d, h, causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(1, h, s, d, device="cuda", dtype=torch.bfloat16)
    inner = 20 if s <= 2048 else (5 if s <= 8192 else 1)
    fwd = gpu_seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), inner=inner)

    def fwd_bwd():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        o.backward(g)

    both = gpu_seconds(fwd_bwd, inner=inner)
    f = flops(s, d, h, causal)
    return f / fwd / 1e12, 2.5 * f / max(both - fwd, 1e-9) / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.rows) if line.strip()]
    header = ("| S | D | H | causal | ours fwd TF/s | torch fwd TF/s | ours/torch fwd | ours bwd TF/s | "
              "torch bwd TF/s | ours/torch bwd | cuBLAS bf16 TF/s |")
    lines = [f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  SDPA backend: {BACKEND}", "", header,
             "|" + "---|" * 11]
    for r in rows:
        if sdpa_kernel is not None:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                tf, tb = sdpa_row(r["s"], r["d"], r["h"], r["causal"])
        else:
            tf, tb = sdpa_row(r["s"], r["d"], r["h"], r["causal"])
        lines.append(
            f"| {r['s']} | {r['d']} | {r['h']} | {'yes' if r['causal'] else 'no'} | {r['fwd_tflops']:.1f} | {tf:.1f} | "
            f"{r['fwd_tflops'] / tf:.2f} | {r['bwd_tflops']:.1f} | {tb:.1f} | {r['bwd_tflops'] / tb:.2f} | "
            f"{r['cublas_tflops']:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
