#!/usr/bin/env python3
"""cuDNN peer for MLA attention: times PyTorch's scaled_dot_product_attention on its cuDNN
backend for the MLA shapes (dq = 128 + 64 = 192, dv = 128, k_pe shared by every head), the
numbers TARGETS.md compares against. bench/attention.ts runs this for its cuDNN columns and
bench/attention_harness.py imports its timing helpers.

FLOPs (FlashAttention convention): forward = b·h·s²·(dq + dv) for causal (half of the full
2·b·h·s²·(dq+dv)), backward = 2.5 × forward.

Output: one JSON object per sequence length on stdout, e.g.
  {"s": 2048, "b": 1, "h": 16, "fwd_ms": 0.069, "bwd_ms": 0.253, "fwd_tflops": 310.1, ...}
Usage: python3 bench/attention_peer.py [--seqs 2048,4096] [--heads 16] [--batch 1] [--reps 30]
"""
import argparse
import json
import math
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

D_NOPE, D_ROPE, D_V = 128, 64, 128
L2_BYTES = 50 * 1024 * 1024


def attention_flops(b, h, s, causal=True, backward=False):
    f = b * h * s * s * (D_NOPE + D_ROPE + D_V) * (1 if causal else 2)
    return f * 2.5 if backward else f


def sets_to_rotate(bytes_per_set):
    """Enough input sets that a repeat never finds its inputs still in L2."""
    return max(2, min(8, math.ceil(3 * L2_BYTES / bytes_per_set)))


def time_ms(calls, reps, warmup=3):
    """Median milliseconds of one call, each timed by CUDA events; calls rotate among input sets.
    A GPU-side sleep first lets the host queue the repetitions ahead of the GPU, so host launch
    time is not counted."""
    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda._sleep(min(2_000_000_000, 400_000 * reps))
    for i in range(reps):
        starts[i].record()
        calls[i % len(calls)]()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def cudnn_inputs(b, s, h, gen):
    """q = (q_nope|q_pe), k = (k_nope|k_pe broadcast to every head), v: [B,H,S,D] views of BSHD."""
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(b, s, h, D_NOPE + D_ROPE, device=dev, dtype=bf, generator=gen)
    k_nope = torch.randn(b, s, h, D_NOPE, device=dev, dtype=bf, generator=gen)
    k_pe = torch.randn(b, s, 1, D_ROPE, device=dev, dtype=bf, generator=gen)
    k = torch.cat([k_nope, k_pe.expand(b, s, h, D_ROPE)], dim=-1)
    v = torch.randn(b, s, h, D_V, device=dev, dtype=bf, generator=gen)
    do = torch.randn(b, s, h, D_V, device=dev, dtype=bf, generator=gen)
    return [x.transpose(1, 2) for x in (q, k, v, do)]


def cudnn_sdpa(q, k, v, causal, scale):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def time_cudnn(b, h, s, causal=True, reps=30, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    scale = (D_NOPE + D_ROPE) ** -0.5
    set_bytes = b * s * h * (2 * (D_NOPE + D_ROPE) + 2 * D_V) * 2
    sets = [cudnn_inputs(b, s, h, gen) for _ in range(sets_to_rotate(set_bytes))]
    fwd_calls = [lambda q=q, k=k, v=v: cudnn_sdpa(q, k, v, causal, scale) for q, k, v, _ in sets]
    fwd_ms = time_ms(fwd_calls, reps)
    bwd_calls = []
    for q, k, v, do in sets:
        q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
        out = cudnn_sdpa(q, k, v, causal, scale)
        bwd_calls.append(lambda out=out, q=q, k=k, v=v, do=do: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
    bwd_ms = time_ms(bwd_calls, reps)
    del sets, fwd_calls, bwd_calls
    torch.cuda.empty_cache()
    return {
        "s": s, "b": b, "h": h, "causal": causal,
        "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
        "fwd_tflops": attention_flops(b, h, s, causal) / fwd_ms / 1e9,
        "bwd_tflops": attention_flops(b, h, s, causal, backward=True) / bwd_ms / 1e9,
        "device": torch.cuda.get_device_name(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="2048,4096,8192,16384,32768")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--non-causal", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("attention_peer: no CUDA device visible to PyTorch", file=sys.stderr)
        sys.exit(2)
    for s in (int(x) for x in args.seqs.split(",")):
        print(json.dumps(time_cudnn(args.batch, args.heads, s, not args.non_causal, args.reps)), flush=True)


if __name__ == "__main__":
    main()
