// The MLA kernel choice (src/backend/cuda/ops/mla_kernel_choice.ts) and where its request comes
// from (src/backend/select.ts: the mla_kernels option, MOETRAIN_MLA_KERNELS overriding it). Pure
// functions: they run without a GPU.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chooseMlaKernels, type MlaKernelQuery } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import { mlaKernelsRequest } from '../src/backend/select.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';

const H100: Pick<MlaKernelQuery, 'arch' | 'computeCapability'> = { arch: 'sm_90a', computeCapability: [9, 0] };
const A100: Pick<MlaKernelQuery, 'arch' | 'computeCapability'> = { arch: 'sm_80', computeCapability: [8, 0] };
const T4: Pick<MlaKernelQuery, 'arch' | 'computeCapability'> = { arch: 'sm_75', computeCapability: [7, 5] };
const DEEPSEEK = { dtype: 'bf16', dNope: 128, dRope: 64, dV: 128 } as const;
const TINY = { dtype: 'f32', dNope: 16, dRope: 8, dV: 16 } as const;

test('"auto" takes the fastest kernels that apply to the device, dtype and widths', () => {
  assert.equal(chooseMlaKernels({ ...H100, ...DEEPSEEK, request: 'auto' }), 'hopper');
  assert.equal(chooseMlaKernels({ ...A100, ...DEEPSEEK, request: 'auto' }), 'mma');
  assert.equal(chooseMlaKernels({ ...T4, ...DEEPSEEK, request: 'auto' }), 'generic');
  assert.equal(chooseMlaKernels({ ...H100, ...TINY, request: 'auto' }), 'generic');
  // DeepSeek's widths in f32, or bf16 at other widths: not the tensor-core kernels.
  assert.equal(chooseMlaKernels({ ...H100, ...DEEPSEEK, dtype: 'f32', request: 'auto' }), 'generic');
  assert.equal(chooseMlaKernels({ ...H100, ...DEEPSEEK, dV: 64, request: 'auto' }), 'generic');
  // sm_100a and later "a" targets have no wgmma: the mma.sync kernels.
  assert.equal(chooseMlaKernels({ arch: 'sm_100a', computeCapability: [10, 0], ...DEEPSEEK, request: 'auto' }), 'mma');
});

test('an explicit request is honoured where it applies and refused with the reason where not', () => {
  assert.equal(chooseMlaKernels({ ...H100, ...DEEPSEEK, request: 'mma' }), 'mma');
  assert.equal(chooseMlaKernels({ ...H100, ...DEEPSEEK, request: 'generic' }), 'generic');
  assert.equal(chooseMlaKernels({ ...H100, ...TINY, request: 'generic' }), 'generic');
  assert.throws(() => chooseMlaKernels({ ...A100, ...DEEPSEEK, request: 'hopper' }), /"hopper" were asked for .*sm_90a GPU.*on sm_80.*Use "auto" or "generic"/);
  assert.throws(() => chooseMlaKernels({ ...H100, ...TINY, request: 'hopper' }), /f32 heads of widths 16\/8\/16/);
  assert.throws(() => chooseMlaKernels({ ...H100, ...TINY, request: 'mma' }), /mma\.sync kernels need bf16 heads of widths 128\/64\/128/);
  assert.throws(() => chooseMlaKernels({ ...T4, ...DEEPSEEK, request: 'mma' }), /compute capability 8\.0 or later/);
});

test('the request: the option, MOETRAIN_MLA_KERNELS over it, a bad value named', () => {
  assert.equal(mlaKernelsRequest({}, {}), 'auto');
  assert.equal(mlaKernelsRequest({ mlaKernels: 'generic' }, {}), 'generic');
  assert.equal(mlaKernelsRequest({ mlaKernels: 'generic' }, { MOETRAIN_MLA_KERNELS: 'mma' }), 'mma');
  assert.equal(mlaKernelsRequest({ mlaKernels: 'hopper' }, { MOETRAIN_MLA_KERNELS: '' }), 'hopper');
  assert.throws(() => mlaKernelsRequest({}, { MOETRAIN_MLA_KERNELS: 'fast' }), /MOETRAIN_MLA_KERNELS=fast is not one of auto, hopper, mma, generic/);
});

test('the train config carries mla_kernels (default "auto") and checks its value', () => {
  assert.equal(defaultTrainConfig().mla_kernels, 'auto');
  assert.equal(mergeTrainConfig(defaultTrainConfig(), { mla_kernels: 'mma' }, 'test').mla_kernels, 'mma');
  assert.throws(() => mergeTrainConfig(defaultTrainConfig(), { mla_kernels: 'wgmma' }, 'flags'), /"mla_kernels" must be one of "auto", "hopper", "mma", "generic"/);
});
