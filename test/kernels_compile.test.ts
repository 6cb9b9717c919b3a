// Every CUDA source compiles for Hopper (sm_90a) with the local nvcc, so a kernel that does
// not compile fails CI even on machines without a GPU. NVRTC compiles the same files at run time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { packageRoot } from '../src/backend/cuda/module.js';

const kernelsDir = path.join(packageRoot(), 'src', 'backend', 'cuda', 'kernels');
const nvcc = spawnSync('nvcc', ['--version']).status === 0 ? 'nvcc' : null;
const files = fs.readdirSync(kernelsDir).filter((f) => f.endsWith('.cu')).sort();

test('there are kernels to check', () => { assert.ok(files.length > 10, `only ${files.length} .cu files in ${kernelsDir}`); });

for (const file of files) {
  test(`nvcc compiles ${file} for sm_90a`, { skip: nvcc ? false : 'skipped: nvcc not installed' }, () => {
    const out = path.join(os.tmpdir(), `moetrain-${process.pid}-${file}.cubin`);
    try {
      execFileSync('nvcc', ['-std=c++17', '-cubin', '-gencode=arch=compute_90a,code=sm_90a', '-I', kernelsDir, '-o', out, path.join(kernelsDir, file)], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { stderr?: Buffer };
      assert.fail(`${file} does not compile:\n${err.stderr?.toString() ?? e}`);
    } finally {
      fs.rmSync(out, { force: true });
    }
  });
}
