#!/usr/bin/env python3
"""The peer a user tries first: PyTorch 2.x (PyPI) training the same small LLaMA on the CPU, to print beside
`rw_bench_train` in the same session. Hugging Face LlamaForCausalLM with SDPA attention, AdamW, one sequence
of L tokens per step, fp32 or bf16 autocast, the same thread count as ours.

    python3 bench/peer_pytorch_train.py --seq 4096,16384 --threads 2 [--steps 3]

Needs torch and transformers (a virtual environment; not used by CI). Model: width 512, FFN 1408, 4 layers,
8 query / 4 key-value heads, vocabulary 259 (rw_bench_train's "small"). The first step warms up and is not
timed; the median of the rest is printed as tokens/s.
"""
import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", default="4096,16384")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"oneDNN bf16 capable: {torch.backends.mkldnn.is_available()}")
    print(f"{'seq':>6} {'prec':>5} | {'step s':>8} {'tokens/s':>9}")
    for L in [int(s) for s in args.seq.split(",")]:
        for prec in args.precision.split(","):
            cfg = LlamaConfig(vocab_size=259, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=L,
                              attn_implementation="sdpa")
            torch.manual_seed(1)
            model = LlamaForCausalLM(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ids = torch.randint(0, 259, (1, L))
            times = []
            for step in range(args.steps):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(prec == "bf16")):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step > 0 or args.steps == 1:  # one step: time it (warm-up included)
                    times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(f"{L:>6} {prec:>5} | {t:8.3f} {L / t:9.0f}", flush=True)


if __name__ == "__main__":
    main()
