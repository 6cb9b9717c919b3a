// Every CUDA source compiles for Hopper (sm_90a) with the local nvcc, so a kernel that does not
// compile fails CI even on machines without a GPU. NVRTC compiles the kernels at run time with
// the -D defines of their launchers (src/backend/cuda/ops/<op>.ts); nvcc gets the same defines,
// imported from those launchers, so a number a launcher and its kernel share is checked where
// the kernel static_asserts it. The benchmarks' probe kernels (bench/*.cu, built by
// bench/attention_harness.py) are checked too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { BINARY_DEFINES } from '../src/backend/cuda/ops/binary.js';
import { COPY_DEFINES } from '../src/backend/cuda/ops/copy.js';
import { CROSS_ENTROPY_DEFINES } from '../src/backend/cuda/ops/cross_entropy.js';
import { FILL_DEFINES } from '../src/backend/cuda/ops/fill.js';
import { GROUPED_GEMM_DEFINES, GROUPED_GEMM_TMA_DEFINES, GROUPED_GEMM_WGMMA_DEFINES } from '../src/backend/cuda/ops/grouped_gemm.js';
import {
  MLA_BWD_DEFINES, MLA_COMMON_DEFINES, MLA_FWD_DEFINES, MLA_HOP_BWD_DEFINES, MLA_HOP_FWD_DEFINES,
} from '../src/backend/cuda/ops/mla_attention.js';
import { MLA_GENERIC_DEFINES } from '../src/backend/cuda/ops/mla_attention_generic.js';
import { MULTI_TENSOR_DEFINES } from '../src/backend/cuda/ops/multi_tensor_table.js';
import { RMS_NORM_DEFINES } from '../src/backend/cuda/ops/rms_norm.js';
import { SLOT_ROWS_DEFINES } from '../src/backend/cuda/ops/slot_rows.js';
import { TOPK_DEFINES } from '../src/backend/cuda/ops/topk.js';
import { UNARY_DEFINES } from '../src/backend/cuda/ops/unary.js';
import { defineOptions, kernelsDir as kernelsFolder, type Defines } from '../src/backend/cuda/runtime/module.js';
import { packageRoot } from '../src/package_root.js';

const kernelsDir = kernelsFolder();
const nvcc = spawnSync('nvcc', ['--version']).status === 0 ? 'nvcc' : null;
const benchDir = path.join(packageRoot(), 'bench');
const cuFiles = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.cu')).sort();
const files = cuFiles(kernelsDir);

/** The defines each source is compiled with: its launcher's (a file not listed takes none). */
const DEFINES: Readonly<Record<string, Defines>> = {
  'copy.cu': COPY_DEFINES, 'fill.cu': FILL_DEFINES, 'unary.cu': UNARY_DEFINES, 'binary.cu': BINARY_DEFINES,
  'cross_entropy.cu': CROSS_ENTROPY_DEFINES, 'rms_norm.cu': RMS_NORM_DEFINES, 'topk.cu': TOPK_DEFINES, 'slot_rows.cu': SLOT_ROWS_DEFINES,
  'mla_attention_generic.cu': MLA_GENERIC_DEFINES, 'mla_attention_fwd.cu': MLA_FWD_DEFINES, 'mla_attention_bwd.cu': MLA_BWD_DEFINES,
  'mla_attention_fwd_hopper.cu': MLA_HOP_FWD_DEFINES, 'mla_attention_bwd_hopper.cu': MLA_HOP_BWD_DEFINES,
  'grouped_gemm.cu': GROUPED_GEMM_DEFINES, 'grouped_gemm_wgmma.cu': GROUPED_GEMM_WGMMA_DEFINES,
  'grouped_gemm_tma.cu': GROUPED_GEMM_TMA_DEFINES,
  'adam_multi.cu': MULTI_TENSOR_DEFINES, 'adam_lean_multi.cu': MULTI_TENSOR_DEFINES, 'sum_squares_multi.cu': MULTI_TENSOR_DEFINES,
  // bench/: the probe includes mla_attention_hopper.cuh, so it takes the MLA head widths.
  'tma_reduce_probe.cu': MLA_COMMON_DEFINES,
};

test('there are kernels to check', () => { assert.ok(files.length > 10, `only ${files.length} .cu files in ${kernelsDir}`); });

const sources = [...files.map((f) => [kernelsDir, f]), ...cuFiles(benchDir).map((f) => [benchDir, f])] as [string, string][];

for (const [dir, file] of sources) {
  test(`nvcc compiles ${path.relative(packageRoot(), path.join(dir, file))} for sm_90a`, { skip: nvcc ? false : 'skipped: nvcc not installed' }, () => {
    const out = path.join(os.tmpdir(), `moetrain-${process.pid}-${file}.cubin`);
    try {
      execFileSync('nvcc', ['-std=c++17', '-cubin', '-gencode=arch=compute_90a,code=sm_90a', '-I', kernelsDir,
        ...defineOptions(DEFINES[file] ?? {}), '-o', out, path.join(dir, file)], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { stderr?: Buffer };
      assert.fail(`${file} does not compile:\n${err.stderr?.toString() ?? e}`);
    } finally {
      fs.rmSync(out, { force: true });
    }
  });
}

// The kernels take these numbers from their launchers only: without the defines the
// preprocessor stops at the kernel's #error, which names the launcher that sets them.
for (const [dir, file] of sources.filter(([, f]) => DEFINES[f] !== undefined)) {
  test(`${file} refuses to build without its launcher's defines`, { skip: nvcc ? false : 'skipped: nvcc not installed' }, () => {
    const r = spawnSync('nvcc', ['-std=c++17', '-E', '-I', kernelsDir, '-o', os.devNull, path.join(dir, file)], { encoding: 'utf8' });
    assert.notEqual(r.status, 0, `${file} preprocessed without any -D define: it must not carry its own copy of them`);
    assert.match(r.stderr, /#error .*(is|are) set by ops\/[a-z_]+\.ts/, `${file}: expected the #error naming the launcher, got:\n${r.stderr}`);
  });
}
