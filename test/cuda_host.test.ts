// Host side of the CUDA backend: library discovery, driver calls, the caching allocator, NVRTC
// compilation and its cache, kernel launch, cuBLASLt GEMM against a CPU reference, NCCL on one
// rank. GPU tests skip with "skipped: no CUDA" where no GPU is visible; the discovery tests run
// everywhere.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import koffi from 'koffi';
import { CachingAllocator, roundAllocation } from '../src/backend/cuda/runtime/allocator.js';
import { CublasLt, type GemmOptions } from '../src/backend/cuda/ffi/cublaslt.js';
import { CudaContext, defaultCudaContext, nvrtcArch } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable, findLibrary } from '../src/backend/cuda/ffi/library.js';
import { KernelArgs } from '../src/backend/cuda/runtime/kernel_args.js';
import { compileKernelFile, loadModule, moduleLoadCounts } from '../src/backend/cuda/runtime/module.js';
import { packageRoot } from '../src/package_root.js';
import { TensorMapSlots, type TiledMap } from '../src/backend/cuda/runtime/tensor_map.js';
import type { CudaDriver } from '../src/backend/cuda/ffi/driver.js';
import { NcclComm, ncclUniqueId, ncclVersion } from '../src/backend/cuda/ffi/nccl.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/dtype.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';
const fixture = (name: string): string => join(packageRoot(), 'test', 'fixtures', name);
const NAN_BITS = 0x7fc00000;

// Seeded uniform(-1, 1): fresh inputs every run would hide nothing more, and failures reproduce.
function randomF32(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = (s / 2 ** 32) * 2 - 1;
  }
  return out;
}

function relativeError(got: Float32Array, ref: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = got[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  return Math.sqrt(num / den);
}

let shared: { ctx: CudaContext; alloc: CachingAllocator } | undefined;
function gpu(): { ctx: CudaContext; alloc: CachingAllocator } {
  if (!shared) {
    const ctx = defaultCudaContext();
    shared = { ctx, alloc: new CachingAllocator(ctx) };
  }
  return shared;
}

// ---- everywhere ----

test('a missing library names the override variable and what was searched', () => {
  const saved = process.env.MOETRAIN_LIBNVRTC;
  process.env.MOETRAIN_LIBNVRTC = '/nonexistent/libnvrtc.so.13';
  try {
    assert.throws(() => findLibrary('nvrtc'), /MOETRAIN_LIBNVRTC=\/nonexistent\/libnvrtc\.so\.13: no such file; point MOETRAIN_LIBNVRTC at libnvrtc\.so\.13/);
  } finally {
    if (saved === undefined) delete process.env.MOETRAIN_LIBNVRTC;
    else process.env.MOETRAIN_LIBNVRTC = saved;
  }
  // Without an override, a library that is absent lists the folders searched.
  const savedHome = process.env.CUDA_HOME;
  try {
    process.env.CUDA_HOME = '/nonexistent-cuda';
    try {
      findLibrary('cublasLt');
    } catch (e) {
      assert.match((e as Error).message, /libcublasLt\.so\.13 not found \(it comes with .*\): searched \/nonexistent-cuda\/lib64, .*set MOETRAIN_LIBCUBLASLT/);
    }
  } finally {
    if (savedHome === undefined) delete process.env.CUDA_HOME;
    else process.env.CUDA_HOME = savedHome;
  }
});

test('cudaAvailable answers without throwing', () => {
  assert.equal(typeof cudaAvailable(), 'boolean');
});

test('allocation sizes round to 512 B below 1 MiB and to 2 MiB above', () => {
  assert.equal(roundAllocation(0), 512);
  assert.equal(roundAllocation(1), 512);
  assert.equal(roundAllocation(512), 512);
  assert.equal(roundAllocation(513), 1024);
  assert.equal(roundAllocation(1 << 20), 1 << 20);
  assert.equal(roundAllocation((1 << 20) + 1), 2 << 20);
  assert.equal(roundAllocation(5 << 20), 6 << 20);
});

test('the NVRTC target is the arch-specific one from Hopper on', () => {
  assert.equal(nvrtcArch(9, 0), 'sm_90a');
  assert.equal(nvrtcArch(8, 0), 'sm_80');
  assert.equal(nvrtcArch(10, 0), 'sm_100a');
});

test('KernelArgs: the parameter array points at 8-byte slots holding the encoded values', () => {
  const args = new KernelArgs(5).ptr(0, 0x7f0012345600n).i32(1, -3).u32(2, 0xffffffff).f32(3, 1.5).i64(4, -(1n << 40n));
  const slotPtrs = koffi.decode(args.pointer, koffi.array('uint64_t', 5, 'Typed')) as BigUint64Array;
  const at = (i: number, type: string): unknown => koffi.decode(slotPtrs[i]!, type);
  assert.equal(slotPtrs[1]! - slotPtrs[0]!, 8n);
  assert.equal(BigInt(at(0, 'uint64_t') as number | bigint), 0x7f0012345600n);
  assert.equal(at(1, 'int32_t'), -3);
  assert.equal(at(2, 'uint32_t'), 0xffffffff);
  assert.equal(at(3, 'float'), 1.5);
  assert.equal(BigInt(at(4, 'int64_t') as number | bigint), -(1n << 40n));
  assert.throws(() => args.i32(5, 0), /argument 5 of 5/);
});

test('KernelArgs: 128-byte CUtensorMap slots are 64-byte aligned and overlap no other slot', () => {
  const args = new KernelArgs(4, [1, 3]).ptr(0, 0x1234n).i32(2, 7);
  const slotPtrs = koffi.decode(args.pointer, koffi.array('uint64_t', 4, 'Typed')) as BigUint64Array;
  for (const i of [1, 3]) {
    assert.equal(slotPtrs[i]! % 64n, 0n, `wide slot ${i} must be 64-byte aligned`);
    assert.equal(args.wideAddress(i), slotPtrs[i]);
  }
  // No slot overlaps another: sort the ranges and check each ends before the next starts.
  const ranges = [0, 1, 2, 3].map((i) => [slotPtrs[i]!, slotPtrs[i]! + ([1, 3].includes(i) ? 128n : 8n)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : 1));
  for (let i = 1; i < ranges.length; i++) assert.ok(ranges[i - 1]![1] <= ranges[i]![0], 'slots overlap');
  assert.equal(BigInt(koffi.decode(slotPtrs[0]!, 'uint64_t') as number | bigint), 0x1234n);
  assert.equal(koffi.decode(slotPtrs[2]!, 'int32_t'), 7);
  assert.throws(() => args.wideAddress(0), /not a 128-byte slot/);
  assert.throws(() => new KernelArgs(2, [2]), /KernelArgs\(2, \[2\]\)/);
});

test('TensorMapSlots: encodes a map once per geometry and only swaps the address after that', () => {
  const calls: string[] = [];
  const driver = {
    tensorMapFunctions: () => ({
      encode: (_out: bigint, dtype: number, rank: number, address: bigint) => { calls.push(`encode ${dtype} ${rank} ${address}`); return 0; },
      replace: (_out: bigint, address: bigint) => { calls.push(`replace ${address}`); return 0; },
    }),
    check: (call: string, code: number) => { if (code !== 0) throw new Error(`${call} failed`); },
  } as unknown as CudaDriver;
  const args = new KernelArgs(2, [0, 1]);
  const maps = new TensorMapSlots(driver, args);
  const map = (address: bigint, S: number): TiledMap =>
    ({ dtype: 'bf16', address, dims: [128, 2, S, 1], strides: [256, 512, 512 * S], box: [64, 1, 128, 1], swizzle128: true });
  maps.set(0, map(0x1000n, 300), 'q');
  maps.set(0, map(0x2000n, 300), 'q');   // same geometry: address only
  maps.set(0, map(0x3000n, 301), 'q');   // new S: encode again
  maps.set(1, map(0x4000n, 301), 'k');   // another slot has its own record
  assert.deepEqual(calls, ['encode 9 4 4096', 'replace 8192', 'encode 9 4 12288', 'encode 9 4 16384']);
  assert.throws(() => maps.set(0, map(0x1008n, 301), 'q'), /q: the copy engine needs 16-byte-aligned addresses/);
  assert.throws(() => maps.set(0, { ...map(0x1000n, 300), strides: [256, 520, 1040] }, 'q'), /16-byte-aligned addresses and row strides/);
});

// ---- GPU ----

test('context: device, arch, events', { skip }, (t) => {
  const { ctx } = gpu();
  assert.ok(ctx.name.length > 0);
  assert.ok(ctx.smCount > 0);
  assert.match(ctx.arch, /^sm_\d+a?$/);
  t.diagnostic(`device: ${ctx.description}, ${(ctx.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB`);
  const ms = ctx.timeMs(() => {});
  assert.ok(ms >= 0 && ms < 100);
});

test('allocator: reuse, stats, large-block slack, out-of-memory message', { skip }, () => {
  const { ctx } = gpu();
  const alloc = new CachingAllocator(ctx);
  const a = alloc.alloc(1000);
  assert.equal(a.capacity, 1024);
  assert.equal(alloc.liveBytes, 1024);
  alloc.free(a);
  assert.equal(alloc.liveBytes, 0);
  const b = alloc.alloc(900); // same class: the cached block comes back, no new cuMemAlloc
  assert.equal(b.ptr, a.ptr);
  assert.equal(alloc.stats().deviceAllocations, 1);
  const big = alloc.alloc(5 << 20);
  assert.equal(big.capacity, 6 << 20);
  assert.equal(alloc.peakBytes, 1024 + (6 << 20));
  alloc.free(big);
  const near = alloc.alloc(3 << 20); // 4 MiB wanted; the 6 MiB block is within 2 MiB slack
  assert.equal(near.ptr, big.ptr);
  alloc.free(near);
  const far = alloc.alloc(1 << 21); // 2 MiB wanted; the 6 MiB block is too large to tie up
  assert.notEqual(far.ptr, big.ptr);
  assert.equal(alloc.reservedBytes, 1024 + (6 << 20) + (2 << 20));
  alloc.resetPeak();
  assert.equal(alloc.peakBytes, alloc.liveBytes);
  assert.throws(() => alloc.free(near), /not live/);
  alloc.free(far);
  alloc.free(b);
  assert.throws(() => alloc.alloc(ctx.totalMemoryBytes * 4), (e: Error) => {
    assert.match(e.message, /^out of GPU memory: requested \d+ bytes .* live, .* reserved by moetrain .* free of .* GiB on .*; reduce the micro-batch/);
    return true;
  });
  alloc.releaseCached();
  assert.equal(alloc.reservedBytes, 0);
});

test('host ↔ device round trip, device copy, word fill', { skip }, () => {
  const { ctx, alloc } = gpu();
  const n = 100_003;
  const host = randomF32(n, 1);
  const x = alloc.alloc(n * 4);
  const y = alloc.alloc(n * 4);
  ctx.upload(x.ptr, host);
  ctx.fillWords(y.ptr, NAN_BITS, n);
  ctx.copyDeviceToDevice(y.ptr, x.ptr, n * 4);
  const back = new Float32Array(n);
  ctx.download(back, y.ptr);
  assert.deepEqual(back, host);
  ctx.fillWords(y.ptr, NAN_BITS, n);
  ctx.download(back, y.ptr);
  assert.ok(back.every(Number.isNaN));
  alloc.free(x);
  alloc.free(y);
});

test('NVRTC: compile, disk cache, in-memory cache, launch with every argument kind', { skip }, (t) => {
  const { ctx, alloc } = gpu();
  process.env.MOETRAIN_KERNEL_CACHE = mkdtempSync(join(tmpdir(), 'moetrain-kernels-'));
  const t0 = performance.now();
  const first = compileKernelFile(ctx.arch, fixture('tiny_kernel.cu'), { OFFSET: '0.5f' });
  const compileMs = performance.now() - t0;
  const second = compileKernelFile(ctx.arch, fixture('tiny_kernel.cu'), { OFFSET: '0.5f' });
  assert.equal(first.fromCache, false);
  assert.equal(second.fromCache, true);
  assert.deepEqual(second.cubin, first.cubin);
  assert.equal(readdirSync(process.env.MOETRAIN_KERNEL_CACHE).filter((f) => f.endsWith('.cubin')).length, 1);
  t.diagnostic(`NVRTC compile of tiny_kernel.cu for ${ctx.arch}: ${compileMs.toFixed(0)} ms`);

  const before = { ...moduleLoadCounts };
  const mod = loadModule(ctx, fixture('tiny_kernel.cu'), { OFFSET: '0.5f' });
  assert.equal(loadModule(ctx, fixture('tiny_kernel.cu'), { OFFSET: '0.5f' }), mod);
  assert.equal(moduleLoadCounts.fromDiskCache, before.fromDiskCache + 1);
  assert.equal(moduleLoadCounts.fromMemory, before.fromMemory + 1);

  const n = 1000;
  const host = randomF32(n, 2);
  const x = alloc.alloc(n * 4);
  const out = alloc.alloc(n * 4);
  ctx.upload(x.ptr, host);
  ctx.fillWords(out.ptr, NAN_BITS, n);
  const args = new KernelArgs(6).ptr(0, out.ptr).ptr(1, x.ptr).f32(2, 3).i32(3, n).u32(4, 7).i64(5, 1n << 40n);
  mod.kernel('axpb').launch([Math.ceil(n / 128), 1, 1], [128, 1, 1], 0, args);
  const got = new Float32Array(n);
  ctx.download(got, out.ptr);
  for (let i = 0; i < n; i++) assert.equal(got[i], Math.fround(Math.fround(3 * host[i]!) + 0.5));

  assert.throws(() => mod.kernel('axpb').launch([1, 1, 1], [1, 1, 1], 0, new KernelArgs(2)), /takes 6 arguments, KernelArgs has 2/);
  assert.throws(() => mod.kernel('no_such_kernel'), /cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND.*extern "C"/);

  // More than 48 KiB of dynamic shared memory needs the opt-in.
  const m = 100 * 256; // 100 KiB of floats
  const rev = mod.kernel('reverse_in_shared');
  rev.setMaxDynamicShared(m * 4);
  const r = alloc.alloc(m * 4);
  rev.launch([1, 1, 1], [256, 1, 1], m * 4, new KernelArgs(2).ptr(0, r.ptr).i32(1, m));
  const rh = new Float32Array(m);
  ctx.download(rh, r.ptr);
  for (let i = 0; i < m; i++) assert.equal(rh[i], m - 1 - i);
  alloc.free(x);
  alloc.free(out);
  alloc.free(r);
});

test('NVRTC: a compile error carries the compiler log', { skip }, () => {
  const { ctx } = gpu();
  const dir = mkdtempSync(join(tmpdir(), 'moetrain-bad-'));
  const bad = join(dir, 'bad.cu');
  writeFileSync(bad, 'extern "C" __global__ void k(float* p) { p[0] = undefined_name; }\n');
  assert.throws(() => compileKernelFile(ctx.arch, bad), /NVRTC could not compile .*bad\.cu[^]*undefined_name/);
});

test('launch host cost with pre-built arguments', { skip }, (t) => {
  const { ctx } = gpu();
  const k = loadModule(ctx, fixture('tiny_kernel.cu'), { OFFSET: '0.5f' }).kernel('empty_kernel');
  const args = new KernelArgs(0);
  const grid = [1, 1, 1] as const;
  const block = [32, 1, 1] as const;
  for (let i = 0; i < 1000; i++) k.launch(grid, block, 0, args);
  ctx.synchronize();
  const n = 20_000;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) k.launch(grid, block, 0, args);
  const hostUs = ((performance.now() - t0) * 1000) / n;
  ctx.synchronize();
  const totalUs = ((performance.now() - t0) * 1000) / n;
  t.diagnostic(`cuLaunchKernel from TypeScript: ${hostUs.toFixed(2)} µs/launch host side, ${totalUs.toFixed(2)} µs/launch until the GPU drained`);
  console.log(`launch: ${hostUs.toFixed(2)} us/launch host, ${totalUs.toFixed(2)} us/launch incl. drain (${ctx.name})`);
  assert.ok(hostUs < 50, `launch overhead ${hostUs} µs is far above the ~4.4 µs measured before`);
});

/** out = alpha·op(a)·op(b) + beta·out0 in f64, for one batch entry. */
function referenceGemm(o: GemmOptions, a: Float32Array, b: Float32Array, out0: Float32Array, batch: number, sa: number, sb: number, so: number): Float64Array {
  const ref = new Float64Array(out0.length);
  const alpha = o.alpha ?? 1;
  const beta = o.beta ?? 0;
  for (let z = 0; z < batch; z++) {
    for (let i = 0; i < o.m; i++) {
      for (let j = 0; j < o.n; j++) {
        let acc = 0;
        for (let p = 0; p < o.k; p++) {
          const av = o.transA ? a[z * sa + p * o.m + i]! : a[z * sa + i * o.k + p]!;
          const bv = o.transB ? b[z * sb + j * o.k + p]! : b[z * sb + p * o.n + j]!;
          acc += av * bv;
        }
        const idx = z * so + i * o.n + j;
        ref[idx] = alpha * acc + (beta === 0 ? 0 : beta * out0[idx]!);
      }
    }
  }
  return ref;
}

test('cuBLASLt GEMM matches a CPU reference on awkward shapes', { skip }, (t) => {
  const { ctx, alloc } = gpu();
  const lt = new CublasLt(ctx, alloc);
  t.diagnostic(`cuBLASLt ${lt.version()}`);
  const cases: (GemmOptions & { tol: number })[] = [
    { m: 37, n: 53, k: 71, dtypeIn: 'bf16', dtypeOut: 'f32', tol: 1e-5 },
    { m: 37, n: 53, k: 71, transA: true, dtypeIn: 'bf16', dtypeOut: 'bf16', tol: 5e-3 },
    { m: 37, n: 53, k: 71, transB: true, alpha: 0.5, beta: 2, dtypeIn: 'f32', dtypeOut: 'f32', tol: 1e-5 },
    { m: 37, n: 53, k: 71, transA: true, transB: true, batch: 3, strideB: 0, dtypeIn: 'bf16', dtypeOut: 'f32', tol: 1e-5 },
    { m: 19, n: 33, k: 130, transB: true, batch: 4, beta: 1, dtypeIn: 'bf16', dtypeOut: 'bf16', tol: 5e-3 },
    { m: 64, n: 1, k: 257, batch: 2, strideA: 0, alpha: -1.5, dtypeIn: 'f32', dtypeOut: 'f32', tol: 1e-5 },
  ];
  let seed = 10;
  for (const c of cases) {
    const batch = c.batch ?? 1;
    const sa = c.strideA ?? c.m * c.k;
    const sb = c.strideB ?? c.k * c.n;
    const so = c.strideOut ?? c.m * c.n;
    const aLen = sa * (batch - 1) + c.m * c.k;
    const bLen = sb * (batch - 1) + c.k * c.n;
    const oLen = so * (batch - 1) + c.m * c.n;
    const inBytes = c.dtypeIn === 'bf16' ? 2 : 4;
    const outBytes = c.dtypeOut === 'bf16' ? 2 : 4;
    // Inputs rounded to the storage dtype first, so the reference sees exactly what the GPU sees.
    const toDevice = (x: Float32Array, dtype: 'bf16' | 'f32'): { host: Float32Array; bytes: ArrayBufferView } => {
      if (dtype === 'f32') return { host: x, bytes: x };
      const bits = f32ArrayToBf16(x);
      return { host: bf16ArrayToF32(bits), bytes: bits };
    };
    const a = toDevice(randomF32(aLen, seed++), c.dtypeIn);
    const b = toDevice(randomF32(bLen, seed++), c.dtypeIn);
    const o0 = toDevice(randomF32(oLen, seed++), c.dtypeOut);
    const da = alloc.alloc(aLen * inBytes);
    const db = alloc.alloc(bLen * inBytes);
    const dout = alloc.alloc(oLen * outBytes);
    ctx.upload(da.ptr, a.bytes);
    ctx.upload(db.ptr, b.bytes);
    if ((c.beta ?? 0) !== 0) ctx.upload(dout.ptr, o0.bytes);
    else if (c.dtypeOut === 'f32') ctx.fillWords(dout.ptr, NAN_BITS, oLen);
    else ctx.fillWords(dout.ptr, 0x7fc07fc0, Math.ceil(oLen / 2)); // two bf16 NaNs per word
    lt.gemm(dout.ptr, da.ptr, db.ptr, c);
    let got: Float32Array;
    if (c.dtypeOut === 'f32') {
      got = new Float32Array(oLen);
      ctx.download(got, dout.ptr);
    } else {
      const bits = new Uint16Array(oLen);
      ctx.download(bits, dout.ptr);
      got = bf16ArrayToF32(bits);
    }
    const ref = referenceGemm(c, a.host, b.host, o0.host, batch, sa, sb, so);
    const err = relativeError(got, ref);
    const name = `${c.m}x${c.n}x${c.k}${c.transA ? ' tA' : ''}${c.transB ? ' tB' : ''} batch ${batch} ${c.dtypeIn}->${c.dtypeOut} beta ${c.beta ?? 0}`;
    t.diagnostic(`${name}: relative error ${err.toExponential(2)}`);
    assert.ok(got.every(Number.isFinite), `${name}: output has NaN (unwritten elements?)`);
    assert.ok(err < c.tol, `${name}: relative error ${err} ≥ ${c.tol}`);
    alloc.free(da);
    alloc.free(db);
    alloc.free(dout);
  }
  assert.throws(() => lt.gemm(0n, 0n, 0n, { m: 2, n: 2, k: 2, dtypeIn: 'f32', dtypeOut: 'bf16' }), /f32 operands need an f32 output/);
});

test('NCCL: world of one all-reduces, all-gathers and reduce-scatters', { skip }, (t) => {
  const { ctx, alloc } = gpu();
  t.diagnostic(`NCCL ${ncclVersion()}`);
  const comm = new NcclComm(ctx, 1, 0, ncclUniqueId());
  const n = 4099;
  const host = randomF32(n, 99);
  const x = alloc.alloc(n * 4);
  const y = alloc.alloc(n * 4);
  ctx.upload(x.ptr, host);
  comm.allReduce(x.ptr, x.ptr, n, 'f32'); // in place
  ctx.fillWords(y.ptr, NAN_BITS, n);
  comm.allGather(x.ptr, y.ptr, n, 'f32');
  const back = new Float32Array(n);
  ctx.download(back, y.ptr);
  assert.deepEqual(back, host);
  const bits = f32ArrayToBf16(host);
  ctx.upload(x.ptr, bits);
  ctx.fillWords(y.ptr, NAN_BITS, n);
  comm.reduceScatter(x.ptr, y.ptr, n, 'bf16');
  const backBits = new Uint16Array(n);
  ctx.download(backBits, y.ptr);
  assert.deepEqual(backBits, bits);
  comm.destroy();
  alloc.free(x);
  alloc.free(y);
});
