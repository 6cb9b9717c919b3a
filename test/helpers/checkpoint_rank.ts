// One rank of the multi-process checkpoint tests (test/checkpoint_ranks.test.ts), started by
// `moetrain launch` (or alone, a world of one). The first argument picks what it does; without
// one (node --test imports every file under dist/test) it does nothing.
//   write DIR STEP   the tiny model's weights and moments (the same on every rank), each rank
//                    writing its share of FSDP-style flat shards, as checkpoint STEP under DIR
//   resume DIR       resumes from DIR with this world's flat shards and checks every value
//   train RUN STEPS  the real training loop (train()) with the world communicator as its group:
//                    each rank trains a whole replica on the same batches; SIGINT/SIGTERM stops
//                    every rank after the same step with one checkpoint written by all
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { DeepseekV2 } from '../../src/models/deepseek_v2.js';
import { formatHfConfig } from '../../src/models/deepseek_v2_config.js';
import { tinyConfig } from '../../src/models/tiny_config.js';
import { Adam } from '../../src/optim/adam.js';
import { toHostF32 } from '../../src/ops/create.js';
import { initDistributed } from '../../src/parallel/init_distributed.js';
import { emptyTensor } from '../../src/tensor/tensor.js';
import { modelEntries, writeCheckpoint, type CheckpointEntry } from '../../src/train/checkpoint.js';
import { agreeMax } from '../../src/train/checkpoint_group.js';
import { resumeFromLatest } from '../../src/train/checkpoint_resume.js';
import { defaultTrainConfig, mergeTrainConfig } from '../../src/train/config.js';
import { listenForStop, STOP_EXIT_CODE } from '../../src/train/signals.js';
import { train } from '../../src/train/trainer.js';
import { fixedBatches } from './fixed_batches.js';

const be = new CpuBackend();
const model = tinyConfig();

/** The reference values: seeded weights and moments filled with distinct values, name → data. */
function referenceValues(): { entries: CheckpointEntry[]; values: Map<string, Float32Array>; dispose: () => void } {
  const m = new DeepseekV2(model, be, 'f32');
  m.initialize(3);
  const adam = new Adam(m.params, { type: 'adamw', lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0 }, be);
  let k = 0;
  for (const t of [...adam.m, ...adam.v]) be.write(t, Float32Array.from({ length: t.size }, () => Math.sin(++k * 0.7) * 1e-3));
  const entries = modelEntries(m, adam);
  return { entries, values: new Map(entries.map((e) => [e.name, toHostF32(e.tensor)])), dispose: () => { m.dispose(); adam.dispose(); } };
}

/** This rank's flat shard: every tensor flattened into one buffer cut into `world` equal pieces. */
function flatShard(whole: readonly CheckpointEntry[], values: Map<string, Float32Array> | null, rank: number, world: number): CheckpointEntry[] {
  const total = whole.reduce((a, e) => a + e.tensor.size, 0);
  const lo = Math.floor((rank * total) / world), hi = Math.floor(((rank + 1) * total) / world);
  const out: CheckpointEntry[] = [];
  let at = 0;
  for (const e of whole) {
    const start = Math.max(0, lo - at), end = Math.min(e.tensor.size, hi - at);
    at += e.tensor.size;
    if (end <= start) continue;
    const t = emptyTensor(be, [end - start], 'f32');
    be.write(t, values ? values.get(e.name)!.slice(start, end) : new Float32Array(end - start));
    out.push({ name: e.name, shape: e.shape, start, end, tensor: t });
  }
  return out;
}

async function main(): Promise<void> {
  const [mode, dir, arg] = process.argv.slice(2);
  if (!mode || !dir) return;
  const world = Number(process.env['WORLD_SIZE'] ?? 1);
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    device: 'cpu', seq_len: 8, micro_batch_size: 1, global_batch_size: 6, steps: mode === 'train' ? Number(arg) : 10, checkpoint_every: 4,
    schedule: { warmup_steps: 2 }, run_dir: dir, parallel: { dp: world },
  }, 'checkpoint_rank');
  const d = await initDistributed(cfg, model, be);
  const group = d.comm;
  switch (mode) {
    case 'write': {
      const ref = referenceValues();
      const jobId = String(agreeMax(group, be, [group.rank === 0 ? process.pid : 0])[0]);
      const folder = writeCheckpoint(dir, Number(arg), flatShard(ref.entries, ref.values, group.rank, world), {
        keep: 0, config: {}, optimizerStep: 3, group, jobId, modelConfigJson: formatHfConfig(model), mesh: d.mesh.name,
      });
      console.log(`rank ${d.rank} wrote ${folder}`);
      ref.dispose();
      break;
    }
    case 'resume': {
      const ref = referenceValues();
      const entries = flatShard(ref.entries, null, group.rank, world);
      const got = resumeFromLatest(dir, { entries, loaded: () => {} }, { backend: be, group, log: (l) => console.log(l), startOver: 'start over' });
      assert.ok(got, 'a checkpoint was found');
      for (const e of entries) {
        const want = ref.values.get(e.name)!.subarray(e.start, e.end);
        assert.ok(Buffer.from(toHostF32(e.tensor).buffer).equals(Buffer.from(want.slice().buffer)), `${e.name} [${e.start}, ${e.end})`);
      }
      console.log(`rank ${d.rank} resumed step ${got.state.step} ok (${entries.length} ranges)`);
      ref.dispose();
      break;
    }
    case 'train': {
      const data = fixedBatches(model.vocab_size, cfg.micro_batch_size, cfg.seq_len);
      // Every rank says when its own listener saw the signal (the first to see it stops them all).
      const stop = listenForStop({ launched: world > 1, log: (l) => console.log(l) });
      fs.mkdirSync(dir, { recursive: true });
      const result = await train({
        config: cfg, model, backend: be, data, group, stop,
        log: (l) => { if (d.rank === 0) console.log(l); },
      });
      stop.close();
      if (d.rank === 0) for (const m of result.metrics) console.log(`record ${m.step} ${m.crossEntropy} ${m.gradientNorm} ${m.learningRate}`);
      if (result.stoppedBy) {
        console.log(`rank ${d.rank} stopped by ${result.stoppedBy} after step ${result.finalStep}; checkpoint ${path.basename(result.checkpoint ?? 'none')}`);
        process.exitCode = STOP_EXIT_CODE[result.stoppedBy];
      } else {
        console.log(`rank ${d.rank} finished step ${result.finalStep}`);
      }
      break;
    }
    default:
      throw new Error(`unknown mode ${mode}`);
  }
  await d.close();
}

await main();
