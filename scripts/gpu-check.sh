#!/usr/bin/env bash
# On a GPU machine: every CUDA test (kernels vs the CPU backend, attention, host bindings, the
# tiny run's GPU/CPU parity, and the op tests with a CUDA case). Logs to ${OUT:-.}/gpu-tests.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
node --test --test-concurrency=1 dist/test/cuda_host.test.js dist/test/cuda_backend.test.js dist/test/cuda_attention.test.js dist/test/cuda_attention_generic.test.js dist/test/cuda_train.test.js dist/test/cuda_train_mla.test.js dist/test/sum_squares.test.js dist/test/multi_tensor.test.js dist/test/adam.test.js 2>&1 | tee "$out/gpu-tests.log"
