// One rank of the pipeline tests (test/pipeline_parallel.test.ts), started by
// `moetrain launch --nproc-per-node 2`. With the pieces of pipeline_fixture.ts (the tiny model
// with 4 layers), each rank builds the model parts of the stages it holds, runs one optimizer
// step's schedule with runPipelineStep, and checks itself against the whole model's step
// computed here in one process from the same seed and micro-batches. Without arguments
// (node --test imports every file under dist/test) it does nothing.
//   equal KINDS M FORM [DTYPES]  per compute dtype (f32 by default; f32,bf16) and schedule
//                       (KINDS: 1f1b,dualpipev): the step's losses and every parameter gradient
//                       of this rank's parts against the single-process step (M micro-batches,
//                       load-balance FORM); prints "rank R ok …" with the largest differences
//   idle KINDS M        per schedule: runs the step 3 times (the first warms up), checks that
//                       the live bytes stay put, and prints the measured idle fraction next to
//                       the simulator's replay of the same passes
// The part-1 mesh check refuses pp > 1 until the trainer runs pipelines, so the two processes
// join as dp2 and the world communicator serves as the pipeline group.
import assert from 'node:assert/strict';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { fromHost, toHostF32 } from '../../src/ops/create.js';
import { emptyTensor } from '../../src/tensor/tensor.js';
import type { DType } from '../../src/tensor/dtype.js';
import type { LoadBalance, LoadBalanceForm } from '../../src/models/deepseek_v2.js';
import { initDistributed, type Distributed } from '../../src/parallel/init_distributed.js';
import { simulate, uniformCosts, type Pass, type ScheduleKind } from '../../src/parallel/schedule_sim.js';
import { B, config, gradientDifference, pipelineOf, S, singleProcess, type Reference } from './pipeline_fixture.js';

function equal(d: Distributed, be: CpuBackend, kind: ScheduleKind, micro: number, lb: LoadBalance, dtype: DType, want: Reference): void {
  const pipe = pipelineOf(d.comm, be, kind, micro, lb, dtype);
  const got = pipe.step();
  // The load-balance sum is over every rank's layers, added in another order than one process's.
  const lbAll = fromHost(be, [got.loadBalanceSum], [1], 'f32');
  d.comm.allReduce(lbAll, 'sum');
  const lbTotal = toHostF32(lbAll)[0]!;
  const lbRel = Math.abs(lbTotal - want.lb) / Math.abs(want.lb);
  assert.ok(lbRel < 1e-6, `load-balance sum ${lbTotal} vs ${want.lb}`);
  let ceNote = '';
  if (got.crossEntropySum !== null) {
    assert.equal(got.crossEntropySum, want.ce, 'cross-entropy sum');
    ceNote = `, cross-entropy sum ${got.crossEntropySum.toFixed(6)} = single ${want.ce.toFixed(6)}`;
  }
  const { worst, where: worstName, count: n } = gradientDifference(pipe.chunks, want);
  assert.ok(worst <= 1e-6, `max |Δgrad| / max |grad| = ${worst}${worstName}`);
  console.log(`rank ${d.rank} ok ${kind} ${dtype} m${micro} ${lb.form}: ${n} gradients, max |Δ|/max|g| ${worst.toExponential(2)}${worstName}, load-balance sum rel ${lbRel.toExponential(2)}${ceNote}`);
  pipe.dispose();
}

/** One-way time (ms) of an activation-sized message between ranks 0 and 1: 20 round trips. */
function pingPong(d: Distributed, be: CpuBackend): number {
  const t = emptyTensor(be, [B * S, config.hidden_size], 'f32');
  be.fill(t, 1);
  d.comm.barrier();
  const t0 = performance.now(), n = 20;
  for (let i = 0; i < n; i++) {
    if (d.rank === 0) { d.comm.send(t, 1); d.comm.recv(t, 1); } else { d.comm.recv(t, 0); d.comm.send(t, 0); }
  }
  const ms = (performance.now() - t0) / (2 * n);
  t.dispose();
  return ms;
}

/**
 * Per round: every rank's passes (direction, micro-batch, stage, ms) and its idle and wall time
 * go to every rank; the simulator replays the round with each pass's measured duration.
 */
function idle(d: Distributed, be: CpuBackend, kind: ScheduleKind, micro: number, lb: LoadBalance): void {
  const pipe = pipelineOf(d.comm, be, kind, micro, lb, 'f32');
  const latency = pingPong(d, be);
  const rounds: { measured: number; simulated: number; withLatency: number; wall: number; transfer: number }[] = [];
  const live: number[] = [];
  for (let round = 0; round < 3; round++) {
    d.comm.barrier();
    const t0 = performance.now();
    const r = pipe.step();
    d.comm.barrier();
    const wall = performance.now() - t0;
    const row = new Float32Array([...r.passes.flatMap((p) => [p.dir === 'forward' ? 0 : 1, p.mb, p.stage, p.ms]), wall - r.computeMs, wall]);
    const all = emptyTensor(be, [d.world, row.length], 'f32'), mine = fromHost(be, row, [row.length], 'f32');
    d.comm.allGather(all, mine);
    const rows = toHostF32(all);
    all.dispose(); mine.dispose();
    // A step leaves the live bytes where the first (which creates the RoPE tables) left them.
    live.push(be.memoryStats().liveBytes);
    assert.equal(live[round], live[0], `${kind}: live bytes after step ${round + 1}`);
    const ms = new Map<string, number>();
    let idleAll = 0, wallAll = 0;
    for (let q = 0; q < d.world; q++) {
      const theirs = rows.subarray(q * row.length, (q + 1) * row.length);
      for (let i = 0; i + 4 <= row.length - 2; i += 4) ms.set(`${theirs[i]} ${theirs[i + 1]} ${theirs[i + 2]}`, theirs[i + 3]!);
      idleAll += theirs[row.length - 2]!;
      wallAll += theirs[row.length - 1]!;
    }
    const cost = (dir: 'forward' | 'backward', p: Pass) => ms.get(`${dir === 'forward' ? 0 : 1} ${p.mb} ${p.stage}`)!;
    const sim = simulate(pipe.schedule, cost, 'eager'), simL = simulate(pipe.schedule, cost, 'eager', latency);
    // The first round warms the JIT up.
    if (round > 0) rounds.push({ measured: idleAll / wallAll, simulated: sim.bubble, withLatency: simL.bubble, wall, transfer: r.transferMs });
  }
  const mean = (f: (x: (typeof rounds)[number]) => number) => rounds.reduce((a, x) => a + f(x), 0) / rounds.length;
  const unit = simulate(pipe.schedule, uniformCosts(pipe.schedule.stageRank.length), 'eager').bubble;
  const measured = mean((x) => x.measured), simulated = mean((x) => x.simulated), withLatency = mean((x) => x.withLatency);
  const closest = Math.min(...rounds.map((x) => x.measured - x.simulated));
  console.log(`rank ${d.rank} idle ${kind} m${micro}: measured ${measured.toFixed(4)} simulated ${simulated.toFixed(4)} closest round ${closest >= 0 ? '+' : ''}${closest.toFixed(4)} with ${latency.toFixed(2)} ms latency ${withLatency.toFixed(4)} unit-cost ${unit.toFixed(4)} (rounds measured/simulated ${rounds.map((x) => `${x.measured.toFixed(3)}/${x.simulated.toFixed(3)}`).join(' ')}); blocked in transfers ${mean((x) => x.transfer).toFixed(1)} of ${mean((x) => x.wall).toFixed(1)} ms`);
  pipe.dispose();
}

async function main(): Promise<void> {
  const [mode, kinds, microArg, formArg, dtypes] = process.argv.slice(2);
  if (!mode) return;
  const micro = Number(microArg);
  const lb: LoadBalance = { form: (formArg ?? 'sequence') as LoadBalanceForm, alpha: 0.01 };
  const be = new CpuBackend();
  const d = await initDistributed({ parallel: { pp: 1, dp: 2, cp: 1, ep: 1, collective_timeout_sec: 60 }, global_batch_size: 2 * B, micro_batch_size: B }, config, be);
  if (mode === 'equal') {
    for (const dtype of (dtypes ?? 'f32').split(',') as DType[]) {
      const want = singleProcess(be, micro, lb, dtype);
      for (const kind of kinds!.split(',') as ScheduleKind[]) equal(d, be, kind, micro, lb, dtype, want);
    }
  } else if (mode === 'idle') {
    for (const kind of kinds!.split(',') as ScheduleKind[]) idle(d, be, kind, micro, lb);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  d.comm.barrier();
  await d.close();
}

main().catch((e: unknown) => {
  console.error(`moetrain: error: ${(e as Error).stack ?? (e as Error).message}`);
  process.exit(1);
});
