// The NCCL communicator end to end on one GPU: a world of one launched as a real run would be
// (RANK/WORLD_SIZE/MASTER_* set, so rank 0 serves the rendezvous store and publishes the
// ncclUniqueId through it), then every collective on CUDA tensors against the host values,
// with outputs poisoned first. Two ranks cannot share one GPU under NCCL, so more ranks need
// the multi-GPU machines. Skipped without CUDA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import type { Backend } from '../src/backend/backend.js';
import { f32ArrayToBf16, type DType, type HostArray } from '../src/tensor/dtype.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';
import { initDistributed } from '../src/parallel/init_distributed.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address() as net.AddressInfo; s.close(() => resolve(port)); });
  });
}

function hostValues(dtype: DType, n: number, seed: number): HostArray {
  const x = Float32Array.from({ length: n }, (_, i) => Math.fround(((Math.imul(i + seed, 0x9e3779b1) >>> 0) / 2 ** 32) * 4 - 2));
  if (dtype === 'bf16') return f32ArrayToBf16(x);
  if (dtype === 'i32') return Int32Array.from(x, (v) => Math.round(v * 1e6));
  return x;
}

function onDevice(b: Backend, dtype: DType, shape: number[], data: HostArray): Tensor {
  const t = emptyTensor(b, shape, dtype);
  b.write(t, data);
  return t;
}

function poisoned(b: Backend, dtype: DType, shape: number[]): Tensor {
  const t = emptyTensor(b, shape, dtype);
  b.fill(t, dtype === 'i32' ? -7 : Number.NaN);
  return t;
}

test('NCCL, world of one through the rendezvous: every collective is exact', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const b = createCudaBackend();
  const env: NodeJS.ProcessEnv = { RANK: '0', WORLD_SIZE: '1', LOCAL_RANK: '0', LOCAL_WORLD_SIZE: '1', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) };
  const cfg = { parallel: { pp: 1, dp: 1, cp: 1, ep: 1, collective_timeout_sec: 60 }, global_batch_size: 4, micro_batch_size: 1 };
  const d = await initDistributed(cfg, { num_hidden_layers: 2, n_routed_experts: 8 }, b, env);
  assert.equal(d.comm.constructor.name, 'NcclCommunicator');
  assert.equal(d.groups.denseShard, d.comm);
  const c = d.comm;
  for (const dtype of ['f32', 'bf16', 'i32'] as const) {
    for (const n of [4099, 1, 0]) {
      const data = hostValues(dtype, n, n + 1);
      for (const op of ['sum', 'max'] as const) {
        const t = onDevice(b, dtype, [n], data);
        c.allReduce(t, op);
        assert.deepEqual(b.read(t), data, `allReduce ${op} ${dtype}[${n}]`);
        t.dispose();
      }
      const inp = onDevice(b, dtype, [n], data);
      for (const call of ['reduceScatter', 'allGather'] as const) {
        const out = poisoned(b, dtype, [n]);
        if (call === 'reduceScatter') c.reduceScatter(out, inp); else c.allGather(out, inp);
        assert.deepEqual(b.read(out), data, `${call} ${dtype}[${n}]`);
        out.dispose();
      }
      inp.dispose();
    }
  }
  // All-to-all to itself: rows of width 5, and zero rows.
  for (const rows of [37, 0]) {
    const data = hostValues('bf16', rows * 5, 3);
    const inp = onDevice(b, 'bf16', [rows, 5], data);
    const out = poisoned(b, 'bf16', [rows, 5]);
    c.allToAll(out, inp, [rows], [rows]);
    assert.deepEqual(b.read(out), data, `allToAll of ${rows} rows`);
    inp.dispose();
    out.dispose();
  }
  const one = onDevice(b, 'f32', [3], Float32Array.from([1, 2, 3]));
  assert.throws(() => c.send(one, 0), /peer 0 is not another rank of a group of 1/);
  one.dispose();
  c.barrier();
  const sub = await c.group([0], 'self');
  assert.equal(sub, c);
  await d.close();
});
