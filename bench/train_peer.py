"""PyTorch peer for `moetrain bench train`: transformers' DeepseekV2ForCausalLM with the same
config (configs/deepseek-v2-lite.json cut to N layers), the same shapes (batch × sequence of
random tokens), AdamW (fused) and clipping at 1.0, timed the same way (synchronised step time,
median after warm-up) on the same card. Weights are bf16 (the usual PyTorch recipe: bf16
parameters with fp32 optimizer math inside fused AdamW), so its memory is not moetrain's f32-master
layout; both are printed.

    python3 bench/train_peer.py --config configs/deepseek-v2-lite.json --layers 4 --seq 2048 --batch 4 --steps 20 [--compile]

Prints one JSON object {"tokens_per_second", "step_ms", "peak_gib", "compile"} as its last line.
"""
import argparse
import json
import statistics
import time

import torch
import transformers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    cfg = json.load(open(args.config))
    cfg["num_hidden_layers"] = args.layers
    cfg["use_cache"] = False
    # transformers' config is strict about floats; the JSON writes some of them as integers.
    for k in ("rope_theta", "routed_scaling_factor", "rms_norm_eps", "initializer_range", "aux_loss_alpha", "attention_dropout"):
        if k in cfg:
            cfg[k] = float(cfg[k])
    config = transformers.DeepseekV2Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "auto_map", "transformers_version")})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.DeepseekV2ForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=True)
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)
    gen = torch.Generator(device="cuda").manual_seed(1)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda", generator=gen)
        labels = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = step_fn(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(f"peer step {step + 1}/{args.steps}: {times[-1] * 1000:.1f} ms, loss {out.loss.item():.4f}", flush=True)
    steady = times[min(3, len(times) - 1):]
    step_s = statistics.median(steady)
    print(json.dumps({
        "tokens_per_second": args.batch * args.seq / step_s,
        "step_ms": step_s * 1000,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "compile": args.compile,
    }))


if __name__ == "__main__":
    main()
