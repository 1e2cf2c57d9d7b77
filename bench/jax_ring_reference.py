#!/usr/bin/env python3
"""Our ring attention beside the official JAX RingAttention (`pip install ringattention jax flax einops`),
both on this CPU, in one run: forward and forward+backward, causal, fp32, contiguous layout (JAX's),
R simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=R) vs our in-process ring of R ranks.

    python3 bench/jax_ring_reference.py --bin build/bench/rw_bench_ring --R 4 --shapes 4096x2x128,8192x2x128

Each shape is LxHxD (global length, heads, head dim). Prints a markdown table; times are medians.
ringattention 0.1.2 imports jax.lib.xla_bridge, which newer JAX removed; a two-line shim restores it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bench/rw_bench_ring")
    ap.add_argument("--R", type=int, default=4)
    ap.add_argument("--shapes", default="4096x2x128,8192x2x128")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.R}"

    import jax
    import jax.numpy as jnp
    from functools import partial
    from jax.sharding import Mesh, PartitionSpec as P
    if not hasattr(jax.lib, "xla_bridge"):
        import jax.extend.backend as _backend
        jax.lib.xla_bridge = types.SimpleNamespace(get_backend=_backend.get_backend)
    from ringattention import ringattention_jax
    try:
        from jax import shard_map
    except ImportError:
        from jax.experimental.shard_map import shard_map

    mesh = Mesh(jax.devices()[: args.R], ("sp",))
    rows = []
    for shape in args.shapes.split(","):
        L, H, D = (int(x) for x in shape.split("x"))
        ours = json.loads(subprocess.run([args.bin, "--jax", f"{args.R},{L},{H},{D}"], check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
        chunk = min(args.chunk, L // args.R)
        kwargs = dict(causal_block_size=1, deterministic=True, dropout_rng=None, attn_pdrop=0.0,
                      query_chunk_size=chunk, key_chunk_size=chunk, dtype=jnp.float32,
                      policy=jax.checkpoint_policies.nothing_saveable, precision=None, prevent_cse=True)
        attn = shard_map(partial(ringattention_jax, axis_name="sp", float32_logits=True, cache_idx=None,
                                 blockwise_kwargs=kwargs),
                         mesh=mesh, in_specs=(P(None, "sp"), P(None, "sp"), P(None, "sp"), None, None),
                         out_specs=P(None, "sp"), check_vma=False) if "check_vma" in shard_map.__code__.co_varnames \
            else shard_map(partial(ringattention_jax, axis_name="sp", float32_logits=True, cache_idx=None,
                                   blockwise_kwargs=kwargs),
                           mesh=mesh, in_specs=(P(None, "sp"), P(None, "sp"), P(None, "sp"), None, None),
                           out_specs=P(None, "sp"), check_rep=False)
        key = jax.random.PRNGKey(0)
        kq, kk, kv, kg = jax.random.split(key, 4)
        q, k, v, g = (jax.random.uniform(x, (1, L, H, D), jnp.float32, -1, 1) for x in (kq, kk, kv, kg))
        fwd = jax.jit(lambda q, k, v: attn(q, k, v, None, None))
        loss = lambda q, k, v: jnp.sum(attn(q, k, v, None, None) * g)
        both = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

        def timed(fn):
            jax.block_until_ready(fn(q, k, v))
            t = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                t.append(time.perf_counter() - t0)
            return statistics.median(t)

        jf, jb = timed(fwd), timed(both)
        rows.append((L, H, D, ours["fwd_s"], jf, ours["fwd_s"] + ours["bwd_s"], jb))
        print(rows[-1], flush=True)
    print(f"\nR = {args.R}, causal, fp32, CPU ({os.cpu_count()} cores), jax {jax.__version__}\n")
    print("| L | H | D | ours fwd s | JAX fwd s | JAX/ours fwd | ours fwd+bwd s | JAX fwd+bwd s | JAX/ours fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L, H, D, of, jf, ob, jb in rows:
        print(f"| {L} | {H} | {D} | {of:.3f} | {jf:.3f} | {jf / of:.1f} | {ob:.3f} | {jb:.3f} | {jb / ob:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
