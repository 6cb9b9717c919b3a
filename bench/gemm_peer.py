"""PyTorch peer for bench/gemm.ts: the same bf16 GEMM shapes through torch.matmul on the same
card, timed the same way (warm-up, then the median of per-call CUDA-event timings).

    python3 bench/gemm_peer.py '[{"name": "square", "m": 8192, "n": 8192, "k": 8192, "transB": false, "reps": 50}]'

Prints one JSON list of {"ms", "tflops"} (one per shape, in order) as its last line.
"""
import json
import sys

import torch


def time_shape(s):
    m, n, k, reps = s["m"], s["n"], s["k"], s["reps"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = (torch.rand(m, k, device="cuda", generator=gen) * 2 - 1).to(torch.bfloat16)
    # nn.Linear's layout: weight [n, k], used transposed; otherwise a plain [k, n] operand.
    if s["transB"]:
        w = (torch.rand(n, k, device="cuda", generator=gen) * 2 - 1).to(torch.bfloat16)
        b = w.t()
    else:
        b = (torch.rand(k, n, device="cuda", generator=gen) * 2 - 1).to(torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(max(5, reps >> 2)):
        torch.matmul(a, b, out=out)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        torch.matmul(a, b, out=out)
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(st.elapsed_time(e) for st, e in zip(starts, ends))
    h = len(times) // 2
    ms = times[h] if len(times) % 2 else (times[h - 1] + times[h]) / 2
    del a, b, out
    torch.cuda.empty_cache()
    return {"ms": ms, "tflops": 2 * m * n * k / (ms * 1e-3) / 1e12}


def main():
    shapes = json.loads(sys.argv[1])
    print(f"gemm_peer: torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    print(json.dumps([time_shape(s) for s in shapes]))


if __name__ == "__main__":
    main()
