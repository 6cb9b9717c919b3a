// Training throughput benchmark (TARGETS.md): DeepSeek-V2-Lite widths cut to 4 layers (layer 0
// dense, 1–3 MoE), sequence 2048, 4 sequences per step, bf16 compute with f32 masters, AdamW,
// clipping at 1.0, random tokens. Prints the step log lines, then tokens/s (median of the steps
// after warm-up), step time and peak memory. The bench drives Training.step itself: no run
// directory, no metrics file, no checkpoints.
//
//   moetrain bench train [--steps 20] [--layers 4] [--seq_len 2048] [--batch 4] [--micro 4] [--device cuda] [--profile 1]
//                        [--peer eager|compile|both|none]   (default eager when python3 has torch and CUDA)
//
// The peer (bench/train_peer.py) is transformers' DeepseekV2ForCausalLM on the same card, run
// in the same command, so the two numbers are comparable. It runs first, in its own process:
// run after ours, it found our ~51 GB still held by this process and ran out of memory.
import path from 'node:path';
import { selectBackend, type DeviceChoice } from '../src/backend/select.js';
import { loadDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { parameterCount, flopsPerToken } from '../src/models/deepseek_v2_weights.js';
import { packageRoot } from '../src/package_root.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { formatLogLine, type StepMetrics } from '../src/train/log_line.js';
import { Training, type BatchSource, type StepHooks, type StepPhase } from '../src/train/trainer.js';
import { Rng } from '../src/nn/rng.js';
import { spawnSync } from 'node:child_process';

export async function runTrainBench(flags: Record<string, string>): Promise<void> {
  const num = (k: string, d: number) => (flags[k] === undefined ? d : Number(flags[k]));
  const steps = num('steps', 20), layers = num('layers', 4), S = num('seq_len', 2048), G = num('batch', 4), micro = num('micro', G);
  const peer = flags['peer'] ?? 'eager';
  const modes = peer === 'both' ? ['eager', 'compile'] : peer === 'none' ? [] : [peer];
  const peers = modes.map((mode) => {
    if (mode !== 'eager' && mode !== 'compile') throw new Error(`--peer must be eager, compile, both or none, got ${peer}`);
    return { mode, result: runPeer(mode, layers, S, G, steps) };
  });
  const model = loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  model.num_hidden_layers = layers;
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    model: `deepseek-v2-lite (${layers} layers)`, data: 'random', device: flags['device'] ?? 'cuda', steps, seq_len: S,
    micro_batch_size: micro, global_batch_size: G,
    optimizer: { lr: 3e-4 }, schedule: { type: 'constant', warmup_steps: 0 },
  }, 'bench train');
  const backend = await selectBackend(cfg.device as DeviceChoice, { mlaKernels: cfg.mla_kernels });
  console.log(`bench train: ${backend.description}; ${layers} layers, ${(parameterCount(model) / 1e9).toFixed(3)}B parameters, ` +
    `${G}×${S} tokens per step (micro-batch ${micro}), ${(flopsPerToken(model, S) / 1e9).toFixed(2)} GFLOP/token`);
  const rng = new Rng(cfg.seed);
  const V = model.vocab_size;
  const data: BatchSource = {
    vocabSize: V,
    batch: () => {
      const inputs = new Int32Array(micro * S), labels = new Int32Array(micro * S);
      for (let i = 0; i < inputs.length; i++) { inputs[i] = rng.below(V); labels[i] = rng.below(V); }
      return { inputs, labels };
    },
  };
  const t0 = performance.now();
  const profile = flags['profile'] === 'true' || flags['profile'] === '1';
  // --profile: each phase synchronised and timed (costs a little speed).
  const phaseSec: Record<StepPhase, number> = { forward: 0, backward: 0, optimizer: 0 };
  const hooks: StepHooks = !profile ? {} : {
    phase: (name, fn) => {
      const t = performance.now();
      const r = fn();
      backend.synchronize();
      phaseSec[name] += (performance.now() - t) / 1000;
      return r;
    },
  };
  const training = new Training(cfg, model, backend);
  training.model.initialize(cfg.seed);
  const metrics: StepMetrics[] = [];
  const phases: Record<StepPhase, number>[] = [];
  for (let step = 0; step < steps; step++) {
    const record = training.step(step, data, hooks);
    console.log(formatLogLine(record));
    metrics.push(record);
    phases.push({ ...phaseSec });
    phaseSec.forward = phaseSec.backward = phaseSec.optimizer = 0;
  }
  training.dispose();
  const rows = metrics.slice(Math.min(3, metrics.length - 1));
  const tps = rows.map((r) => r.tokensPerSecond).sort((a, b) => a - b)[Math.floor(rows.length / 2)]!;
  const peak = Math.max(...metrics.map((r) => r.peakMemoryBytes));
  const stepTime = rows.map((r) => r.stepTimeSec).sort((a, b) => a - b)[Math.floor(rows.length / 2)]!;
  console.log(`bench train: median tokens/s ${Math.round(tps).toLocaleString('en-US')}, median step ${stepTime.toFixed(3)} s, ` +
    `peak memory ${(peak / 2 ** 30).toFixed(2)} GiB, MFU ${(100 * tps * flopsPerToken(model, S) / 989e12).toFixed(1)}% of 989 TFLOP/s ` +
    `(${((performance.now() - t0) / 1000).toFixed(0)} s in all)`);
  const first = metrics[0]!, last = metrics[metrics.length - 1]!;
  console.log(`bench train: reserved ${((last.reservedMemoryBytes ?? 0) / 2 ** 30).toFixed(2)} GiB; system allocations ${first.systemAllocations ?? '-'} after step 1, ${last.systemAllocations ?? '-'} after step ${last.step}`);
  if (profile) {
    const timed = phases.slice(Math.min(3, phases.length - 1));
    const med = (k: StepPhase) => timed.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(timed.length / 2)]! * 1000;
    console.log(`bench train: phases (median ms, synchronised): forward ${med('forward').toFixed(1)}, backward ${med('backward').toFixed(1)}, ` +
      `grad-norm + optimizer + zero ${med('optimizer').toFixed(1)}`);
  }
  for (const { mode, result } of peers) {
    const summary = typeof result === 'string' ? result
      : `${Math.round(result.tokens_per_second).toLocaleString('en-US')} tokens/s, ${result.step_ms.toFixed(1)} ms/step, ` +
        `peak ${result.peak_gib.toFixed(2)} GiB; ours/peer ${(tps / result.tokens_per_second).toFixed(2)}x`;
    console.log(`bench train: PyTorch peer (${mode}): ${summary}`);
  }
}

interface PeerResult { tokens_per_second: number; step_ms: number; peak_gib: number }

/** Runs bench/train_peer.py on the same card; returns its numbers or why it did not run. */
function runPeer(mode: 'eager' | 'compile', layers: number, S: number, G: number, steps: number): PeerResult | string {
  const probe = spawnSync('python3', ['-c', 'import torch, transformers; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) return 'skipped (python3 with torch, transformers and CUDA not found)';
  const args = [path.join(packageRoot(), 'bench', 'train_peer.py'), '--config', path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'),
    '--layers', String(layers), '--seq', String(S), '--batch', String(G), '--steps', String(steps), ...(mode === 'compile' ? ['--compile'] : [])];
  const run = spawnSync('python3', args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (run.status !== 0) return `failed: ${run.stderr.trim().split('\n').slice(-3).join(' | ')}`;
  const last = run.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as PeerResult;
}
