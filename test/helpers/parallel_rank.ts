// One rank of the multi-process tests in test/parallel_*.test.ts, started by `moetrain launch`
// or spawned directly with RANK/WORLD_SIZE/MASTER_* set. The first argument picks what it does;
// without one (node --test imports every file under dist/test) it does nothing.
//   collectives DP EP  every collective on CPU tensors against values computed here on the host
//   fail-hang R        rank R throws after two collectives; the others wait outside any collective
//   fail-collective R  rank R throws; the others wait in an all-reduce (they see the lost peer)
//   fail-stubborn R    like fail-hang, but the others ignore SIGTERM (the launcher must SIGKILL)
//   timeout            rank 1 arrives 5 s late at an all-reduce with a 1 s timeout
//   init DP EP [T]     initDistributed only (rendezvous and mesh errors), timeout T seconds
import assert from 'node:assert/strict';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import type { Backend } from '../../src/backend/backend.js';
import { bf16ArrayToF32, f32ArrayToBf16, type DType, type HostArray } from '../../src/tensor/dtype.js';
import { emptyTensor, type Tensor } from '../../src/tensor/tensor.js';
import type { Communicator } from '../../src/parallel/communicator.js';
import { initDistributed, type Distributed } from '../../src/parallel/init_distributed.js';

const sleepBlocking = (ms: number): void => { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); };

/** A value in [-3, 3) that depends on rank and index, with bits below bf16 precision (a cheap hash). */
function value(rank: number, i: number, salt = 0): number {
  let h = Math.imul(i + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(rank + 1, 0xc2b2ae35) ^ Math.imul(salt + 7, 0x27d4eb2f);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h ^= h >>> 13;
  return Math.fround(((h >>> 0) / 2 ** 32) * 6 - 3);
}

function tensorOf(backend: Backend, dtype: DType, shape: number[], data: HostArray): Tensor {
  const t = emptyTensor(backend, shape, dtype);
  backend.write(t, data);
  return t;
}

function hostData(dtype: DType, n: number, f: (i: number) => number): HostArray {
  const x = Float32Array.from({ length: n }, (_, i) => f(i));
  if (dtype === 'bf16') return f32ArrayToBf16(x);
  if (dtype === 'i32') return Int32Array.from(x, (v) => Math.round(v * 1000));
  return x;
}

/** Sum in rank order with the dtype's rounding (f32: after every add; bf16: once at the end). */
function expectedReduce(dtype: DType, n: number, ranks: readonly number[], op: 'sum' | 'max', salt: number): HostArray {
  const parts = ranks.map((r) => hostData(dtype, n, (i) => value(r, i, salt)));
  if (dtype === 'i32') {
    const out = Int32Array.from(parts[0] as Int32Array);
    for (const p of parts.slice(1)) for (let i = 0; i < n; i++) out[i] = op === 'sum' ? (out[i]! + p[i]!) | 0 : Math.max(out[i]!, p[i]!);
    return out;
  }
  const f = parts.map((p) => (p instanceof Uint16Array ? bf16ArrayToF32(p) : (p as Float32Array)));
  const acc = Float32Array.from(f[0]!);
  for (const p of f.slice(1)) for (let i = 0; i < n; i++) acc[i] = op === 'sum' ? acc[i]! + p[i]! : Math.max(acc[i]!, p[i]!);
  return dtype === 'bf16' ? f32ArrayToBf16(acc) : acc;
}

let checks = 0;
function same(got: HostArray, want: HostArray, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
  checks++;
}

function checkAllReduce(c: Communicator, b: Backend, dtype: DType, n: number, op: 'sum' | 'max', salt: number): void {
  const t = tensorOf(b, dtype, [n], hostData(dtype, n, (i) => value(c.worldRanks[c.rank]!, i, salt)));
  c.allReduce(t, op);
  same(b.read(t), expectedReduce(dtype, n, c.worldRanks, op, salt), `allReduce ${op} ${dtype}[${n}] on ${c.name}`);
  t.dispose();
}

async function collectives(d: Distributed, b: Backend): Promise<void> {
  const w = d.comm;
  const me = w.rank, n = w.size;
  for (const dtype of ['f32', 'bf16', 'i32'] as const) {
    for (const size of [1003, 1, n - 1, 0]) checkAllReduce(w, b, dtype, size, 'sum', size);
    checkAllReduce(w, b, dtype, 517, 'max', 5);
  }
  // 8 MB in one message per peer.
  checkAllReduce(w, b, 'f32', 2 << 20, 'sum', 9);

  // reduce-scatter: rank r gets slice r of the sum.
  const m = 257;
  const inp = tensorOf(b, 'f32', [n * m], hostData('f32', n * m, (i) => value(me, i, 3)));
  const out = emptyTensor(b, [m], 'f32');
  w.reduceScatter(out, inp);
  same(b.read(out), (expectedReduce('f32', n * m, w.worldRanks, 'sum', 3) as Float32Array).slice(me * m, (me + 1) * m), 'reduceScatter');

  // all-gather, bf16, odd size.
  const g = 333;
  const piece = tensorOf(b, 'bf16', [g], hostData('bf16', g, (i) => value(me, i, 4)));
  const all = emptyTensor(b, [n, g], 'bf16');
  w.allGather(all, piece);
  const wantAll = new Uint16Array(n * g);
  for (let r = 0; r < n; r++) wantAll.set(hostData('bf16', g, (i) => value(r, i, 4)) as Uint16Array, r * g);
  same(b.read(all), wantAll, 'allGather');

  // all-to-all of rows 3 wide, uneven counts with zeros; row values name (source, destination, index).
  const rows = (src: number, dst: number): number => (src * 7 + dst * 3 + 1) % 5;
  const W = 3;
  const sendRows = [...Array(n).keys()].map((p) => rows(me, p));
  const recvRows = [...Array(n).keys()].map((p) => rows(p, me));
  const rowValue = (src: number, dst: number, k: number, j: number): number => src * 1000 + dst * 100 + k * 10 + j;
  const sendData: number[] = [], wantRecv: number[] = [];
  for (let p = 0; p < n; p++) for (let k = 0; k < sendRows[p]!; k++) for (let j = 0; j < W; j++) sendData.push(rowValue(me, p, k, j));
  for (let p = 0; p < n; p++) for (let k = 0; k < recvRows[p]!; k++) for (let j = 0; j < W; j++) wantRecv.push(rowValue(p, me, k, j));
  const a2aIn = tensorOf(b, 'f32', [sendData.length / W, W], Float32Array.from(sendData));
  const a2aOut = emptyTensor(b, [wantRecv.length / W, W], 'f32');
  w.allToAll(a2aOut, a2aIn, sendRows, recvRows);
  same(b.read(a2aOut), Float32Array.from(wantRecv), 'allToAll');

  // Point to point around the ring: sendRecv, then send/recv ordered so that nobody waits on a cycle.
  if (n > 1) {
    const next = (me + 1) % n, prev = (me + n - 1) % n;
    const big = 1 << 20;
    const mine = tensorOf(b, 'f32', [big], hostData('f32', big, (i) => value(me, i, 6)));
    const got = emptyTensor(b, [big], 'f32');
    w.sendRecv(mine, next, got, prev);
    same(b.read(got), hostData('f32', big, (i) => value(prev, i, 6)), 'sendRecv');
    const small = tensorOf(b, 'i32', [5], Int32Array.from([me, 1, 2, 3, 4]));
    const back = emptyTensor(b, [5], 'i32');
    if (me % 2 === 0) { w.send(small, next); w.recv(back, prev); } else { w.recv(back, prev); w.send(small, next); }
    same(b.read(back), Int32Array.from([prev, 1, 2, 3, 4]), 'send/recv');
  }
  w.barrier();

  // The mesh's groups, and a group made by hand from the first and last rank.
  for (const [name, c] of Object.entries(d.groups)) {
    checkAllReduce(c, b, 'f32', 101, 'sum', name.length);
    assert.equal(c.worldRanks[c.rank], me, `${name}: own rank`);
  }
  assert.deepEqual(d.groups.ep.worldRanks, d.mesh.groupRanks(['ep']));
  if (n > 2 && (me === 0 || me === n - 1)) {
    const ends = await w.group([0, n - 1], 'ends');
    checkAllReduce(ends, b, 'bf16', 77, 'sum', 8);
    ends.barrier();
  }
  w.barrier();
  await d.close();
  console.log(`rank ${d.rank} ok ${checks} checks`);
}

async function main(): Promise<void> {
  const [mode, a, b, c] = process.argv.slice(2);
  if (!mode) return;
  const backend = new CpuBackend();
  const dp = mode === 'collectives' || mode === 'init' ? Number(a) : Number(process.env.WORLD_SIZE ?? 1);
  const ep = mode === 'collectives' || mode === 'init' ? Number(b) : 1;
  const timeout = mode === 'timeout' ? 1 : mode === 'init' && c ? Number(c) : 30;
  const world = Number(process.env.WORLD_SIZE ?? 1);
  const cfg = { parallel: { pp: 1, dp, cp: 1, ep, collective_timeout_sec: timeout }, global_batch_size: 4 * world, micro_batch_size: 1 };
  const d = await initDistributed(cfg, { num_hidden_layers: 2, n_routed_experts: 8 }, backend);
  const failing = Number(a);
  const x = tensorOf(backend, 'f32', [4], Float32Array.from([1, 2, 3, 4]));
  switch (mode) {
    case 'collectives':
      return collectives(d, backend);
    case 'init':
      console.log(`rank ${d.rank} joined ${d.mesh.name}`);
      return d.close();
    case 'fail-hang':
    case 'fail-collective':
    case 'fail-stubborn':
      d.comm.allReduce(x, 'sum');
      d.comm.allReduce(x, 'sum');
      if (d.rank === failing) {
        console.error(`failing at ${Date.now()}`);
        throw new Error(`planted failure on rank ${d.rank}`);
      }
      if (mode === 'fail-collective') { d.comm.allReduce(x, 'sum'); return; }
      if (mode === 'fail-stubborn') process.on('SIGTERM', () => {});
      sleepBlocking(60_000);
      return;
    case 'timeout':
      if (d.rank === 1) sleepBlocking(5000);
      d.comm.allReduce(x, 'sum');
      return;
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

main().catch((e: unknown) => {
  console.error(`moetrain: error: ${(e as Error).message}`);
  process.exit(1);
});
