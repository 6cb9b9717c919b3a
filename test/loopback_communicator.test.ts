// The loopback communicator (one rank of a larger world in one process): each collective's
// output has the size the real collective gives, holds the stand-in values its header promises,
// returns at once, and is counted with the bytes NCCL's bus-bandwidth conventions put on the
// wire; groups are loopbacks of their size sharing the world's stats.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { fromHost, toHostF32, toHostI32 } from '../src/ops/create.js';
import { emptyTensor } from '../src/tensor/tensor.js';
import { gatherRotation, LoopbackCommunicator } from '../src/parallel/loopback_communicator.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import { Mesh } from '../src/parallel/mesh.js';
import { buildMeshGroups } from '../src/parallel/init_distributed.js';

const be = new CpuBackend();
const f32 = (xs: number[], shape = [xs.length]) => fromHost(be, Float32Array.from(xs), shape, 'f32');

test('all-gather copies this rank\'s input into every slot (rotated in the others); reduce-scatter copies its own slice; all-reduce leaves t', () => {
  const c = new LoopbackCommunicator(4, 2);
  const inp = f32([1, 2, 3, 4, 5]), out = emptyTensor(be, [20], 'f32');
  c.allGather(out, inp);
  // Slot p starts at (p − 2 mod 4)·7919 mod 5: slot 2 at 0, slot 3 at 4, slot 0 at 3, slot 1 at 2.
  assert.deepEqual(Array.from(toHostF32(out)), [4, 5, 1, 2, 3, 3, 4, 5, 1, 2, 1, 2, 3, 4, 5, 5, 1, 2, 3, 4]);
  assert.deepEqual([0, 1, 2, 3].map((p) => gatherRotation(p, 2, 4, 5)), [3, 2, 0, 4]);
  // A router of 64 experts × 2048 sharded over 4: no gathered row equals another.
  const rows = new Set([0, 1, 2, 3].map((p) => gatherRotation(p, 1, 4, 16 * 2048) % 2048));
  assert.equal(rows.size, 4);
  const full = f32(Array.from({ length: 8 }, (_, i) => i)), part = emptyTensor(be, [2], 'f32');
  c.reduceScatter(part, full);
  assert.deepEqual(Array.from(toHostF32(part)), [4, 5]);
  const t = f32([7, 8]);
  c.allReduce(t, 'sum');
  assert.deepEqual(Array.from(toHostF32(t)), [7, 8]);
  const k = c.stats.byKind();
  // Bus bytes: all-gather (n−1)/n · 80, reduce-scatter (n−1)/n · 32, all-reduce 2(n−1)/n · 8.
  assert.deepEqual([k['all-gather'].calls, k['all-gather'].payloadBytes, k['all-gather'].busBytes], [1, 80, 60]);
  assert.deepEqual([k['reduce-scatter'].calls, k['reduce-scatter'].payloadBytes, k['reduce-scatter'].busBytes], [1, 32, 24]);
  assert.deepEqual([k['all-reduce'].calls, k['all-reduce'].payloadBytes, k['all-reduce'].busBytes], [1, 8, 12]);
  for (const x of [inp, out, full, part, t]) x.dispose();
  c.close();
});

test('all-to-all: symmetric routing, every block sized by recvRows, filled from the self block (cyclically), zeros from an empty input', () => {
  const c = new LoopbackCommunicator(2, 1);
  // Rows of width 2: rank 0 gets rows 0-1 (a, b), this rank (1) gets row 2 (c).
  const inp = f32([10, 11, 20, 21, 30, 31], [3, 2]);
  // Counts first, as expert dispatch exchanges them: recv block p = what this rank sends itself.
  const table = fromHost(be, Int32Array.from([2, 7, 1, 9]), [2, 2], 'i32'), got = emptyTensor(be, [2, 2], 'i32');
  c.allToAll(got, table, [1, 1], [1, 1]);
  assert.deepEqual(Array.from(toHostI32(got)), [1, 9, 1, 9]);
  const out = emptyTensor(be, [2, 2], 'f32');
  c.allToAll(out, inp, [2, 1], [1, 1]);
  assert.deepEqual(Array.from(toHostF32(out)), [30, 31, 30, 31]);
  // The reverse direction (combine): blocks of 2 and 1 rows, read from the self block on, wrapping.
  const back = emptyTensor(be, [3, 2], 'f32');
  c.allToAll(back, out, [1, 1], [2, 1]);
  assert.deepEqual(Array.from(toHostF32(back)), [30, 31, 30, 31, 30, 31]);
  const none = emptyTensor(be, [0, 2], 'f32'), zeros = emptyTensor(be, [2, 2], 'f32');
  be.fill(zeros, 5);
  c.allToAll(zeros, none, [0, 0], [1, 1]);
  assert.deepEqual(Array.from(toHostF32(zeros)), [0, 0, 0, 0]);
  const k = c.stats.byKind()['all-to-all'];
  // Wire bytes: the larger of rows to and from the other rank: 1 counts row (8 B), then max(2, 1)·8, max(1, 2)·8, max(0, 1)·8.
  assert.equal(k.calls, 4);
  assert.equal(k.busBytes, 8 + 16 + 16 + 8);
  assert.equal(k.payloadBytes, 16 + 24 + 16 + 0);
  for (const x of [inp, table, got, out, back, none, zeros]) x.dispose();
  c.close();
});

test('send/recv never block: a recv reads the last same-sized send to that peer, or fixed values in [−1, 1)', () => {
  const c = new LoopbackCommunicator(2, 0);
  const r = emptyTensor(be, [3], 'f32');
  be.fill(r, 9);
  c.recv(r, 1); // nothing sent yet
  const first = Array.from(toHostF32(r));
  assert.ok(first.every((x) => x >= -1 && x < 1) && new Set(first).size === 3, `[${first}]`);
  const a = f32([1, 2, 3]), small = f32([4]);
  c.send(a, 1);
  c.send(small, 1); // another size: its own buffer
  c.recv(r, 1);
  assert.deepEqual(Array.from(toHostF32(r)), [1, 2, 3]);
  const b = f32([5, 6, 7]);
  c.sendRecv(b, 1, r, 1);
  assert.deepEqual(Array.from(toHostF32(r)), [5, 6, 7]);
  const k = c.stats.byKind().p2p;
  assert.equal(k.calls, 5);
  assert.equal(k.busBytes, 12 + 12 + 4 + 12 + 12);
  assert.throws(() => c.send(a, 0), /not another rank/);
  for (const x of [r, a, small, b]) x.dispose();
  c.close();
});

test('groups are loopbacks of their size sharing the stats; a group of one is local; the mesh groups of pp2·dp2·ep2', async () => {
  const world = new LoopbackCommunicator(8, 5);
  const mesh = new Mesh({ pp: 2, dp: 2, cp: 1, ep: 2 }, 5);
  const g = await buildMeshGroups(world, mesh);
  assert.deepEqual([g.pp.size, g.dp.size, g.ep.size, g.denseShard.size, g.expertShard.size, g.data.size], [2, 2, 2, 4, 2, 4]);
  assert.ok(g.cp instanceof LocalCommunicator);
  assert.deepEqual(g.pp.worldRanks, [1, 5]);
  assert.equal(g.pp.rank, 1);
  assert.deepEqual(g.denseShard.worldRanks, [4, 5, 6, 7]);
  assert.equal(g.denseShard.rank, 1);
  // dp·cp·ep and dp·ep have the same ranks at cp 1: separate records by name.
  assert.notEqual(g.denseShard.name, g.data.name);
  const t = f32([1, 2]), out = emptyTensor(be, [8], 'f32');
  g.denseShard.allGather(out, t);
  g.pp.send(t, 0);
  const k = world.stats.byKind();
  assert.equal(k['all-gather'].calls, 1);
  assert.equal(k.p2p.calls, 1);
  assert.ok(world.stats.records.has('all-gather dp·cp·ep'));
  t.dispose(); out.dispose();
  world.close();
  assert.throws(() => g.pp.send(f32([1]), 0), /after close/);
});
