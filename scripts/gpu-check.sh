#!/usr/bin/env bash
# On a GPU machine: every CUDA test (kernels vs the CPU backend, attention, host bindings, the
# tiny run's GPU/CPU parity, NCCL through the communicator). Fails at once when CUDA is not
# usable here, rather than reporting every test as skipped. Logs to ${OUT:-.}/gpu-tests.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
node -e "import('./dist/src/backend/cuda/ffi/library.js').then((m) => { if (!m.cudaAvailable()) { console.error('test:gpu: CUDA is not usable here (no libcuda.so.1 or no GPU visible); run it on a GPU machine after npm run build'); process.exit(1); } })" || exit 1
node --test --test-concurrency=1 dist/test/cuda_*.test.js dist/test/sum_squares.test.js dist/test/multi_tensor.test.js dist/test/adam.test.js 2>&1 | tee "$out/gpu-tests.log"
