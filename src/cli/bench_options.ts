// The options of `moetrain bench` (benchmarks of bench/, run on a GPU). Only `bench train` takes
// options; bench/train.ts reads them under these snake_case names.
import type { CommandSpec } from './args.js';

export const BENCH_COMMAND: CommandSpec = {
  name: 'bench',
  summary: 'GPU benchmarks: gemm (cuBLASLt bf16 GEMMs), attention (MLA attention kernels against cuDNN), train (training steps of DeepSeek-V2-Lite cut to a few layers, against a PyTorch peer).',
  positionals: [{ name: 'BENCHMARK', help: 'gemm | attention | train', required: true }],
  options: [
    { name: 'cp', value: 'N', help: 'attention: time the ring-attention blocks one of N context-parallel ranks computes (2 or 4) against the whole-sequence kernel, s = 4096/8192/16384' },
    { name: 'steps', value: 'N', default: '20', help: 'train: steps to time (the median excludes the first three)' },
    { name: 'layers', value: 'N', default: '4', help: 'train: layers of DeepSeek-V2-Lite to keep (layer 0 dense, the rest MoE)' },
    { name: 'seq_len', value: 'N', default: '2048', help: 'train: tokens per sequence' },
    { name: 'batch', value: 'N', default: '4', help: 'train: sequences per step' },
    { name: 'micro', value: 'N', default: 'the batch', help: 'train: sequences per micro-batch' },
    { name: 'device', value: 'auto|cpu|cuda', default: 'cuda', help: 'train: the device' },
    { name: 'profile', value: null, help: 'train: synchronise between phases and parts and print the step by layer kind (slower)' },
    { name: 'gemm_ceiling', value: 'TFLOPS', default: '786', help: 'train: the measured bf16 GEMM ceiling that the second MFU figure is taken against' },
    { name: 'peer', value: 'eager|compile|both|none', default: 'eager', help: 'train: the PyTorch peer run first in the same command' },
    { name: 'recipe', value: 'default|lean|both', default: 'default', help: 'train: the training recipe (src/optim/recipe.ts); both runs our trainer once per recipe and the peer once' },
  ],
};
