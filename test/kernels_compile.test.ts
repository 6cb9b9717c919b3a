// Every CUDA source compiles for Hopper (sm_90a) with the local nvcc, so a kernel that does
// not compile fails CI even on machines without a GPU. NVRTC compiles the kernels at run time;
// the benchmarks' probe kernels (bench/*.cu, built by bench/attention_harness.py) are checked too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { packageRoot } from '../src/backend/cuda/module.js';

const kernelsDir = path.join(packageRoot(), 'src', 'backend', 'cuda', 'kernels');
const nvcc = spawnSync('nvcc', ['--version']).status === 0 ? 'nvcc' : null;
const benchDir = path.join(packageRoot(), 'bench');
const cuFiles = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.cu')).sort();
const files = cuFiles(kernelsDir);

test('there are kernels to check', () => { assert.ok(files.length > 10, `only ${files.length} .cu files in ${kernelsDir}`); });

for (const [dir, file] of [...files.map((f) => [kernelsDir, f]), ...cuFiles(benchDir).map((f) => [benchDir, f])] as [string, string][]) {
  test(`nvcc compiles ${path.relative(packageRoot(), path.join(dir, file))} for sm_90a`, { skip: nvcc ? false : 'skipped: nvcc not installed' }, () => {
    const out = path.join(os.tmpdir(), `moetrain-${process.pid}-${file}.cubin`);
    try {
      execFileSync('nvcc', ['-std=c++17', '-cubin', '-gencode=arch=compute_90a,code=sm_90a', '-I', kernelsDir, '-o', out, path.join(dir, file)], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { stderr?: Buffer };
      assert.fail(`${file} does not compile:\n${err.stderr?.toString() ?? e}`);
    } finally {
      fs.rmSync(out, { force: true });
    }
  });
}
