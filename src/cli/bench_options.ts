// The options of `moetrain bench` (benchmarks of bench/, run on a GPU). `bench train` and
// `bench simulate` take options; bench/train.ts and bench/simulate.ts read them under these
// snake_case names.
import type { CommandSpec } from './args.js';

export const BENCH_COMMAND: CommandSpec = {
  name: 'bench',
  summary: 'GPU benchmarks: gemm (cuBLASLt bf16 GEMMs), attention (MLA attention kernels against cuDNN), train (training steps of DeepSeek-V2-Lite cut to a few layers, against a PyTorch peer), simulate (one rank of a multi-GPU layout on one device, collectives as local copies, with a predicted multi-GPU throughput).',
  positionals: [{ name: 'BENCHMARK', help: 'gemm | attention | train | simulate', required: true }],
  options: [
    { name: 'grouped', value: null, help: 'gemm: time the grouped expert GEMM (forward, dX, dW at the 64-expert bench shapes) against one cuBLASLt product per expert' },
    { name: 'cp', value: 'N', help: 'attention: time the ring-attention blocks one of N context-parallel ranks computes (2 or 4) against the whole-sequence kernel, s = 4096/8192/16384' },
    { name: 'one_launch', value: null, help: 'attention --cp: time only the ring in one launch per rank against the whole-sequence kernel, not the launch per ring step' },
    { name: 'steps', value: 'N', default: '20', help: 'train: steps to time (the median excludes the first three); simulate: steps to run (default 2; the first is not timed)' },
    { name: 'layers', value: 'N', default: '4', help: 'train: layers of DeepSeek-V2-Lite to keep (layer 0 dense, the rest MoE); simulate: default all 27 (tiny: 4)' },
    { name: 'seq_len', value: 'N', default: '2048', help: 'train, simulate: tokens per sequence (simulate --model tiny: 32)' },
    { name: 'batch', value: 'N', default: '4', help: 'train: sequences per step; simulate: the global batch (default 1024, the reference\'s; tiny: 16); attention --cp: the whole-sequence kernel\'s batch, the ring\'s same-work rows run cp× it (default 1)' },
    { name: 'micro', value: 'N', default: 'the batch', help: 'train: sequences per micro-batch; simulate: default 1' },
    { name: 'device', value: 'auto|cpu|cuda', default: 'cuda', help: 'train, simulate: the device' },
    { name: 'recompute', value: 'cheap|copies|none|layers', default: 'cheap', help: 'train: what backward computes again instead of keeping (the train option)' },
    { name: 'keep_logits', value: null, help: 'train: the head keeps its logits for backward (the train option), in either recipe' },
    { name: 'profile', value: null, help: 'train: synchronise between phases and parts and print the step by layer kind (slower)' },
    { name: 'kernels', value: null, help: 'train: time every kernel and cuBLASLt product of the steps after warm-up with device events and print them by device time per step, each under the part of the step that launched it (attention, mlp, router, experts, head, optimizer, other; the step runs a little slower)' },
    { name: 'gemm_ceiling', value: 'TFLOPS', default: '786', help: 'train: the measured bf16 GEMM ceiling that the second MFU figure is taken against' },
    { name: 'grouped_gemm', value: 'auto|mma|wgmma|tma|tma_pair|per_expert', default: 'auto', help: 'train: routed-expert GEMM kernels (as the train option)' },
    { name: 'gate_up_dx', value: null, help: 'train: --gate_up_dx=false composes the routed experts\' gate and up input gradients from two data products and an add instead of the tma sets\' one launch over the 2N reduction (to measure what it gains)' },
    { name: 'pair_dw', value: null, help: 'train: --pair_dw=false runs the routed experts\' weight products with the tma set\'s one-CTA kernel under tma_pair (one launch a product) instead of its CTA pairs (to measure what they gain)' },
    { name: 'peer', value: 'eager|compile|both|none', default: 'eager', help: 'train: the PyTorch peer run first in the same command' },
    { name: 'model', value: 'PATH|tiny', default: 'configs/deepseek-v2-lite.json', help: 'simulate: the model config, or "tiny" (the built-in demo model, for a CPU smoke test)' },
    { name: 'layout', value: 'pp2,dp2,cp1,ep2', default: 'pp2,dp2,cp1,ep2', help: 'simulate: the mesh (sizes not named are 1); --parallel.* override it' },
    { name: 'parallel.pp', value: 'N', help: 'simulate: pipeline stages' },
    { name: 'parallel.dp', value: 'N', help: 'simulate: data-parallel replicas' },
    { name: 'parallel.cp', value: 'N', help: 'simulate: context-parallel ranks' },
    { name: 'parallel.ep', value: 'N', help: 'simulate: expert-parallel ranks' },
    { name: 'parallel.hold_weights', value: null, help: 'simulate: hold each unit\'s gathered weights over the step (the train option: 1 all-gather per unit per step)' },
    { name: 'parallel.hold_grads', value: null, help: 'simulate: accumulate each unit\'s full gradient over the step (the train option: 1 reduce-scatter per unit per step)' },
    { name: 'rank', value: 'R', default: 'the costliest stage\'s', help: 'simulate: which world rank of the mesh to run' },
    { name: 'schedule', value: '1f1b|dualpipev', default: '1f1b', help: 'simulate: the pipeline schedule' },
    { name: 'overlap', value: null, help: 'simulate: the FSDP all-gathers\' and reduce-scatters\' loopback copies run on the communication stream, as NCCL runs them, overlapping compute (compute is then the step less the other copies)' },
    { name: 'bus_gbps', value: 'GB/s', default: '360', help: 'simulate: the bus bandwidth per GPU the prediction assumes (NVIDIA\'s published H100 NVLink figures; not measured here)' },
    { name: 'latency_us', value: 'µs', default: '10', help: 'simulate: the cost per collective call the prediction assumes' },
    { name: 'recipe', value: 'default|lean|both', default: 'default', help: 'train: the training recipe (src/optim/recipe.ts); both runs our trainer once per recipe and the peer once' },
  ],
};
