// The launch contract (torchrun and SLURM variables), the mesh's rank layout and groups, the
// mesh's validation messages, the `parallel` config section, and the world-of-one path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyLaunchEnv, firstSlurmHost, localRank, readLaunchEnv, slurmTasksOnNode } from '../src/parallel/launch_env.js';
import { Mesh, meshCoordsOf, meshGroupRanks, meshRankOf, validateMesh, type MeshSizes } from '../src/parallel/mesh.js';
import { initDistributed } from '../src/parallel/init_distributed.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import { rankEnv } from '../src/parallel/launcher.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { emptyTensor } from '../src/tensor/tensor.js';
import { defaultTrainConfig, flagsToOverrides, mergeTrainConfig } from '../src/train/config.js';

test('torchrun variables are read as they are; none at all is a world of one', () => {
  const e = readLaunchEnv({ RANK: '5', WORLD_SIZE: '8', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '4', MASTER_ADDR: 'node0', MASTER_PORT: '29400' });
  assert.deepEqual(e, { rank: 5, world: 8, localRank: 1, localWorld: 4, masterAddr: 'node0', masterPort: 29400, source: 'torchrun' });
  const bare = readLaunchEnv({ RANK: '3', WORLD_SIZE: '4' });
  assert.deepEqual([bare.localRank, bare.localWorld, bare.masterAddr, bare.masterPort], [3, 4, '127.0.0.1', 29500]);
  assert.deepEqual(readLaunchEnv({}), { rank: 0, world: 1, localRank: 0, localWorld: 1, masterAddr: '127.0.0.1', masterPort: 29500, source: 'none' });
  assert.equal(localRank({ RANK: '6', WORLD_SIZE: '8', LOCAL_RANK: '2', LOCAL_WORLD_SIZE: '4' }), 2);
});

test('bad launch variables get one line naming the variable', () => {
  assert.throws(() => readLaunchEnv({ RANK: 'x', WORLD_SIZE: '2' }), /^Error: RANK=x is not an integer ≥ 0/);
  assert.throws(() => readLaunchEnv({ RANK: '1' }), /RANK and WORLD_SIZE must be set together/);
  assert.throws(() => readLaunchEnv({ RANK: '4', WORLD_SIZE: '4' }), /rank 4 is outside a world of 4 ranks/);
  assert.throws(() => readLaunchEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '70000' }), /MASTER_PORT=70000 is not a TCP port/);
});

test('under srun the values come from SLURM_* and are written back as torchrun variables', () => {
  const env: NodeJS.ProcessEnv = {
    SLURM_PROCID: '6', SLURM_STEP_NUM_TASKS: '8', SLURM_NODEID: '1', SLURM_LOCALID: '2',
    SLURM_STEP_TASKS_PER_NODE: '4(x2)', SLURM_STEP_NODELIST: 'gpu[07-08]', SLURM_NTASKS: '16',
  };
  const e = applyLaunchEnv(env);
  assert.deepEqual(e, { rank: 6, world: 8, localRank: 2, localWorld: 4, masterAddr: 'gpu07', masterPort: 29500, source: 'slurm' });
  assert.deepEqual([env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, env.LOCAL_WORLD_SIZE, env.MASTER_ADDR, env.MASTER_PORT], ['6', '8', '2', '4', 'gpu07', '29500']);
  // The torchrun variables win over SLURM's when both are there (a launcher inside an allocation).
  assert.equal(readLaunchEnv({ ...env, RANK: '1', WORLD_SIZE: '2', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '2' }).rank, 1);
  assert.equal(firstSlurmHost('node12'), 'node12');
  assert.equal(firstSlurmHost('a1,b[2-3]'), 'a1');
  assert.equal(firstSlurmHost('gpu[009,011-012],cpu1'), 'gpu009');
  assert.equal(slurmTasksOnNode('4(x2),3', 2), 3);
  assert.equal(slurmTasksOnNode('4(x2),3', 1), 4);
});

test('the launcher gives each child the contract and keeps NVLink multicast off', () => {
  const o = { program: ['node'], nprocPerNode: 4, nnodes: 2, nodeRank: 1, masterAddr: '10.0.0.1', masterPort: 29501, env: { PATH: '/bin' } };
  const e = rankEnv(o, 3);
  assert.deepEqual([e.RANK, e.LOCAL_RANK, e.WORLD_SIZE, e.LOCAL_WORLD_SIZE, e.MASTER_ADDR, e.MASTER_PORT, e.NCCL_NVLS_ENABLE, e.PATH], ['7', '3', '8', '4', '10.0.0.1', '29501', '0', '/bin']);
  assert.equal(rankEnv({ ...o, env: { NCCL_NVLS_ENABLE: '1' } }, 0).NCCL_NVLS_ENABLE, '1');
});

test('mesh ranks: ep innermost, coordinates round-trip, groups agree on every member', () => {
  const s: MeshSizes = { pp: 2, dp: 2, cp: 1, ep: 2 };
  assert.equal(meshRankOf(s, { pp: 1, dp: 0, cp: 0, ep: 1 }), 5);
  for (let r = 0; r < 8; r++) assert.equal(meshRankOf(s, meshCoordsOf(s, r)), r);
  // 17 = ((1·3 + 1)·2 + 0)·2 + 1
  assert.deepEqual(meshCoordsOf({ pp: 2, dp: 3, cp: 2, ep: 2 }, 17), { pp: 1, dp: 1, cp: 0, ep: 1 });
  const m = new Mesh(s, 5);
  assert.deepEqual(m.groups(), { pp: [1, 5], dp: [5, 7], cp: [5], ep: [4, 5], denseShard: [4, 5, 6, 7], expertShard: [5, 7], data: [4, 5, 6, 7] });
  assert.equal(m.name, 'pp2·dp2·cp1·ep2');
  // Every member of a group computes the same group, and one kind of group partitions the world.
  const big: MeshSizes = { pp: 2, dp: 2, cp: 2, ep: 2 };
  for (const dims of [['ep'], ['dp', 'cp'], ['dp', 'cp', 'ep'], ['pp']] as const) {
    const seen = new Set<string>();
    for (let r = 0; r < 16; r++) {
      const g = meshGroupRanks(big, r, dims);
      assert.ok(g.includes(r));
      for (const q of g) assert.deepEqual(meshGroupRanks(big, q, dims), g);
      seen.add(g.join(','));
    }
    const size = dims.reduce((n, d) => n * big[d], 1);
    assert.equal(seen.size, 16 / size, `${dims} groups partition the world`);
  }
});

test('an invalid mesh is one line with the equation and the numbers', () => {
  const w = { numLayers: 2, nRoutedExperts: 8, globalBatch: 16, microBatch: 4 };
  assert.throws(() => validateMesh({ pp: 1, dp: 2, cp: 1, ep: 2 }, 3, w), (e: Error) => e.message.startsWith('pp·dp·cp·ep = 1·2·1·2 = 4 ≠ WORLD_SIZE 3;') && !e.message.includes('\n'));
  assert.throws(() => validateMesh({ pp: 1, dp: 1, cp: 1, ep: 3 }, 3, w), /^Error: n_routed_experts % ep = 8 % 3 = 2 ≠ 0; choose --parallel.ep dividing 8$/);
  assert.throws(() => validateMesh({ pp: 4, dp: 1, cp: 1, ep: 1 }, 4, w), /num_hidden_layers = 2 < pp = 4/);
  assert.throws(() => validateMesh({ pp: 1, dp: 8, cp: 1, ep: 1 }, 8, w), /micro-batches % \(dp·ep\) = \(16\/4\) % \(8·1\) = 4 % 8 = 4 ≠ 0/);
  assert.throws(() => validateMesh({ pp: 1, dp: 0, cp: 1, ep: 1 }, 1, w), /--parallel.dp must be a positive integer/);
  validateMesh({ pp: 2, dp: 2, cp: 1, ep: 2 }, 8, w);
  const pw = { ...w, numLayers: 4, seqLen: 32 };
  validateMesh({ pp: 2, dp: 1, cp: 2, ep: 1 }, 4, { ...pw, schedule: 'dualpipev' });
  assert.throws(() => validateMesh({ pp: 1, dp: 1, cp: 3, ep: 1 }, 3, pw), /^Error: seq_len % \(2·cp\) = 32 % \(2·3\) = 2 ≠ 0: .*choose --parallel.cp dividing seq_len \/ 2 = 16/);
  assert.throws(() => validateMesh({ pp: 4, dp: 1, cp: 1, ep: 1 }, 4, { ...pw, schedule: 'dualpipev' }), /^Error: num_hidden_layers = 4 < 2·pp = 8: .*lower --parallel.pp to at most 2 or use --parallel.schedule 1f1b$/);
  assert.throws(() => validateMesh({ pp: 2, dp: 2, cp: 1, ep: 1 }, 4, { ...pw, schedule: 'dualpipev' }), /^Error: the dualpipev schedule needs ≥ 2·pp − 1 = 2·2 − 1 = 3 micro-batches per replica, got \(global_batch_size \/ micro_batch_size\) \/ \(dp·ep\) = \(16\/4\) \/ \(2·1\) = 2; raise global_batch_size to 24 .*--parallel.schedule 1f1b$/);
});

test('the parallel section of the training config: defaults, flags, and bad values', () => {
  const d = defaultTrainConfig();
  assert.deepEqual(d.parallel, { pp: 1, dp: 1, cp: 1, ep: 1, collective_timeout_sec: 300, schedule: '1f1b', stages: null, hold_weights: false, hold_grads: false });
  const c = mergeTrainConfig(d, flagsToOverrides({ 'parallel.dp': '2', 'parallel.ep': '4', 'parallel.collective_timeout_sec': '30' }), 'command line');
  assert.deepEqual(c.parallel, { pp: 1, dp: 2, cp: 1, ep: 4, collective_timeout_sec: 30, schedule: '1f1b', stages: null, hold_weights: false, hold_grads: false });
  const p = mergeTrainConfig(d, flagsToOverrides({ 'parallel.pp': '2', 'parallel.schedule': 'dualpipev', 'parallel.stages': '1,2,2,1' }), 'command line');
  assert.deepEqual([p.parallel.schedule, p.parallel.stages], ['dualpipev', [1, 2, 2, 1]]);
  assert.throws(() => mergeTrainConfig(d, flagsToOverrides({ 'parallel.schedule': 'gpipe' }), 'command line'), /"parallel.schedule" must be one of "1f1b", "dualpipev", got "gpipe"/);
  assert.throws(() => mergeTrainConfig(d, flagsToOverrides({ 'parallel.stages': '2,x' }), 'command line'), /"parallel.stages" must be null or a list of positive layer counts/);
  assert.throws(() => mergeTrainConfig(d, flagsToOverrides({ 'parallel.dp': '0' }), 'command line'), /"parallel.dp" must be a positive integer, got 0/);
  assert.throws(() => mergeTrainConfig(d, flagsToOverrides({ 'parallel.ed': '2' }), 'command line'), /did you mean "parallel.ep"/);
});

test('without a launcher, initDistributed is a world of one whose collectives are copies', async () => {
  const b = new CpuBackend();
  const cfg = { parallel: { ...defaultTrainConfig().parallel }, global_batch_size: 16, micro_batch_size: 16 };
  const d = await initDistributed(cfg, { num_hidden_layers: 2, n_routed_experts: 8 }, b, {});
  assert.equal(d.world, 1);
  assert.ok(d.comm instanceof LocalCommunicator);
  assert.equal(d.groups.denseShard, d.comm);
  const x = emptyTensor(b, [2, 3], 'f32');
  b.write(x, Float32Array.from([1, 2, 3, 4, 5, 6]));
  d.comm.allReduce(x, 'max');
  const y = emptyTensor(b, [6], 'f32');
  d.comm.allGather(y, x);
  assert.deepEqual(Array.from(b.read(y)), [1, 2, 3, 4, 5, 6]);
  const z = emptyTensor(b, [2, 3], 'f32');
  d.comm.allToAll(z, x, [2], [2]);
  assert.deepEqual(Array.from(b.read(z)), [1, 2, 3, 4, 5, 6]);
  assert.throws(() => d.comm.allToAll(z, x, [1], [2]), /sendRows sum to 1 but the input has 2 rows/);
  const four = emptyTensor(b, [4], 'f32');
  assert.throws(() => d.comm.reduceScatter(four, y), /internal: reduceScatter on group world: input has 6 elements, expected size·out = 1·4/);
  // A mesh that needs more ranks than there are fails before any rendezvous.
  await assert.rejects(initDistributed({ ...cfg, parallel: { ...cfg.parallel, dp: 2 } }, { num_hidden_layers: 2, n_routed_experts: 8 }, b, {}), /pp·dp·cp·ep = 1·2·1·1 = 2 ≠ WORLD_SIZE 1/);
  for (const t of [x, y, z, four]) t.dispose();
  await d.close();
});
