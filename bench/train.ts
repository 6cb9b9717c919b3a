// Training throughput benchmark (TARGETS.md): DeepSeek-V2-Lite widths cut to 4 layers (layer 0
// dense, 1–3 MoE), sequence 2048, 4 sequences per step, bf16 compute with f32 masters, AdamW,
// clipping at 1.0, random tokens. Prints the step log lines, then tokens/s (median of the steps
// after warm-up), step time and peak memory, MFU against 989 TFLOP/s and against the measured
// GEMM ceiling, and on CUDA the launches and host time per step. --profile adds the step broken
// down by layer kind (bench/train_profile.ts) and the optimizer against its byte floor. The
// bench drives Training.step itself: no run directory, no metrics file, no checkpoints.
//
//   moetrain bench train [--steps 20] [--layers 4] [--seq_len 2048] [--batch 4] [--micro 4] [--device cuda] [--profile 1]
//                        [--peer eager|compile|both|none]   (default eager when python3 has torch and CUDA)
//                        [--gemm_ceiling 786]   (TFLOP/s; cuBLASLt bf16 at 8192³ on an H100, DESIGN.md)
//                        [--recipe default|lean|both]   (optim/recipe.ts; both: our trainer once per recipe, the peer once)
//
// The peer (bench/train_peer.py) is transformers' DeepseekV2ForCausalLM on the same card, run
// in the same command, so the two numbers are comparable. It runs first, in its own process:
// run after ours, it found our ~51 GB still held by this process and ran out of memory.
//
// Under `moetrain launch --nproc-per-node N -- bench train …` every rank runs the step with
// sharded parameters over dp = N (the launched path, NCCL even for N = 1); rank 0 prints, and
// the peer runs only for N = 1.
import path from 'node:path';
import { selectBackend, type DeviceChoice } from '../src/backend/select.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { launchCounts } from '../src/backend/cuda/runtime/module.js';
import { LaunchTimer, launchTiming, type LaunchTimes } from '../src/backend/cuda/runtime/launch_timer.js';
import { loadDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { parameterCount, flopsPerToken } from '../src/models/deepseek_v2_weights.js';
import { packageRoot } from '../src/package_root.js';
import { defaultTrainConfig, mergeTrainConfig, type TrainConfig } from '../src/train/config.js';
import { formatLogLine, type StepMetrics } from '../src/train/log_line.js';
import { Training, type BatchSource, type StepHooks, type StepPhase } from '../src/train/trainer.js';
import { Rng } from '../src/nn/rng.js';
import { applyLaunchEnv } from '../src/parallel/launch_env.js';
import { initDistributed } from '../src/parallel/init_distributed.js';
import { estimateMemory, type RankEstimate } from '../src/parallel/memory_estimate.js';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { RECIPES, type Recipe } from '../src/optim/recipe.js';
import { PROFILE_KINDS, SectionProfiler, type KindTimes, type ProfileKind } from './train_profile.js';

/**
 * Bytes per parameter of the optimizer phase: Σ g² reads the gradient (4), the fused AdamW pass 30
 * (adam_multi.cu, which leaves the gradients: the trainer marks them logically zero,
 * autograd/lazy_grad_zero.ts); lean: Σ g² 2, the pass 14 (adam_lean_multi.cu; the router's and
 * the norm gains' f32 state aside).
 */
const OPTIMIZER_BYTES: Record<Recipe, { perParam: number; what: string }> = {
  default: { perParam: 30, what: 'fused AdamW + bf16 copy 30 B/parameter (gradients zeroed lazily)' },
  lean: { perParam: 14, what: 'fused bf16 AdamW with stochastic rounding 14 B/parameter (gradients zeroed lazily)' },
};
const HBM_BYTES_PER_SEC = 3e12;

export async function runTrainBench(flags: Record<string, string>, peersRun?: { mode: string; result: PeerResult | string }[]): Promise<void> {
  const recipeFlag = flags['recipe'] ?? 'default';
  if (recipeFlag === 'both') {
    // The peer runs once (its recipe does not change); our trainer runs once per recipe.
    let peers: { mode: string; result: PeerResult | string }[] | undefined;
    for (const recipe of RECIPES) {
      const line = `bench train: --recipe ${recipe}`;
      console.log(line);
      await runTrainBench({ ...flags, recipe }, peers);
      peers ??= lastPeers;
    }
    return;
  }
  if (!(RECIPES as readonly string[]).includes(recipeFlag)) throw new Error(`--recipe must be default, lean or both, got ${recipeFlag}`);
  const recipe = recipeFlag as Recipe;
  const num = (k: string, d: number) => (flags[k] === undefined ? d : Number(flags[k]));
  const steps = num('steps', 20), layers = num('layers', 4), S = num('seq_len', 2048), G = num('batch', 4), micro = num('micro', G);
  const gemmCeiling = num('gemm_ceiling', 786);
  if (!(gemmCeiling > 0)) throw new Error(`--gemm_ceiling must be a positive number of TFLOP/s, got ${flags['gemm_ceiling']}`);
  // Before the backend: the CUDA context takes its device from LOCAL_RANK.
  const launch = applyLaunchEnv();
  const leader = launch.rank === 0;
  const say = (line: string): void => { if (leader) console.log(line); };
  const peer = flags['peer'] ?? 'eager';
  const modes = peer === 'both' ? ['eager', 'compile'] : peer === 'none' || launch.world > 1 ? [] : [peer];
  const peers = peersRun ?? modes.map((mode) => {
    if (mode !== 'eager' && mode !== 'compile') throw new Error(`--peer must be eager, compile, both or none, got ${peer}`);
    return { mode, result: runPeer(mode, layers, S, G, steps) };
  });
  lastPeers = peers;
  const model = loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  model.num_hidden_layers = layers;
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    model: `deepseek-v2-lite (${layers} layers)`, data: 'random', device: flags['device'] ?? 'auto', recipe, steps, seq_len: S,
    micro_batch_size: micro, global_batch_size: G,
    optimizer: { lr: 3e-4 }, schedule: { type: 'constant', warmup_steps: 0 }, parallel: { dp: launch.world },
    ...(flags['grouped_gemm'] !== undefined ? { grouped_gemm: flags['grouped_gemm'] } : {}),
    ...(flags['recompute'] !== undefined ? { recompute: flags['recompute'] } : {}),
    // Both recipes. The lean one with kept logits measured 23.17 GiB on an H100 (2026-12-07), over
    // the compiled peer's 22.67, but 1.24 GiB of that was its weights, gradients and moments
    // allocated one by one (each rounded to 2 MiB); carved from slabs since (nn/param_arena.ts),
    // the estimate is 21.9 GiB. Keeping them saves one lm_head GEMM a step.
    keep_logits: flags['keep_logits'] === 'true' || flags['keep_logits'] === '1',
  }, 'bench train');
  const backend = await selectBackend(cfg.device as DeviceChoice, { mlaKernels: cfg.mla_kernels, groupedGemm: cfg.grouped_gemm });
  // --gate_up_dx=false: the experts' gate-and-up data product composed (two data products and an add)
  // rather than one tma launch, to measure what the one launch gains.
  if ((flags['gate_up_dx'] === 'false' || flags['gate_up_dx'] === '0') && backend instanceof CudaBackend) backend.groupedGemmGateUpData = false;
  // --pair_dw=false: under tma_pair, the experts' weight products run tma's one-CTA kernel, one
  // launch a product (as before the pairs had their own), to measure what the pairs gain.
  if ((flags['pair_dw'] === 'false' || flags['pair_dw'] === '0') && backend instanceof CudaBackend) backend.groupedGemmPairWeight = false;
  const estimate = refuseIfTooLarge(backend, cfg, model, { pp: 1, dp: launch.world, cp: 1, ep: 1 }, S, micro, G / micro / launch.world);
  const dist = launch.source === 'none' ? null : await initDistributed(cfg, model, backend);
  say(`bench train: ${backend.description}; ${layers} layers, ${(parameterCount(model) / 1e9).toFixed(3)}B parameters, ` +
    `${G}×${S} tokens per step (micro-batch ${micro}), ${(flopsPerToken(model, S) / 1e9).toFixed(2)} GFLOP/token, recipe ${recipe}` +
    (dist ? `; launched: ${dist.world} rank(s), parameters sharded over dp ${dist.world}` : ''));
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
  // --profile: each phase synchronised and timed, and each part of the model (costs some speed).
  const phaseSec: Record<StepPhase, number> = { forward: 0, backward: 0, optimizer: 0 };
  const ctx = backend instanceof CudaBackend ? backend.ctx : null;
  // --kernels: device time by kernel over the steps after warm-up (runtime/launch_timer.ts), each
  // launch under the part of the step it belongs to (the model's sections, else the phase).
  const kernelTimer = flags['kernels'] === 'true' || flags['kernels'] === '1' ? (ctx ? new LaunchTimer(ctx.driver) : null) : null;
  const setPart = (part: string) => { if (kernelTimer) kernelTimer.part = part; };
  const profiler = profile || kernelTimer ? new SectionProfiler(backend, { timed: profile, onKind: (k) => setPart(k) }) : null;
  const hooks: StepHooks = !profiler ? {} : {
    phase: (name, fn) => {
      if (profile) backend.synchronize();
      const t = performance.now();
      setPart(name === 'optimizer' ? 'optimizer' : 'other');
      if (name === 'backward') profiler.beginBackward();
      const r = fn();
      if (name === 'backward') profiler.endBackward();
      setPart('other');
      if (profile) backend.synchronize();
      phaseSec[name] += (performance.now() - t) / 1000;
      return r;
    },
  };
  // What the start costs before step 1 (on the H100 machine it was ~95 s at 2.26B parameters,
  // most of it expected in the initial weights: nn/init.ts).
  const tModel = performance.now();
  const training = new Training(cfg, model, backend, dist);
  const tInit = performance.now();
  training.model.initialize(cfg.seed);
  if (ctx) backend.synchronize();
  say(`bench train: set up in ${((performance.now() - t0) / 1000).toFixed(1)} s: model, gradients and optimizer state ` +
    `${((tInit - tModel) / 1000).toFixed(1)} s, initial weights ${((performance.now() - tInit) / 1000).toFixed(1)} s`);
  training.model.sections = profiler;
  const metrics: StepMetrics[] = [];
  const phases: Record<StepPhase, number>[] = [];
  const kinds: { forward: KindTimes; backward: KindTimes }[] = [];
  const perStep: { kernels: number; cublasLt: number; hostMs: number; waits: number }[] = [];
  const kernelTimes: LaunchTimes = new Map();
  let kernelSteps = 0;
  for (let step = 0; step < steps; step++) {
    launchTiming.timer = kernelTimer && step >= Math.min(3, steps - 1) ? kernelTimer : null;
    const k0 = launchCounts.kernels, g0 = launchCounts.cublasLt, w0 = ctx?.waits.ms ?? 0, n0 = ctx?.waits.count ?? 0;
    const t = performance.now();
    const record = training.step(step, data, hooks);
    const wall = performance.now() - t;
    perStep.push({
      kernels: launchCounts.kernels - k0, cublasLt: launchCounts.cublasLt - g0,
      hostMs: wall - ((ctx?.waits.ms ?? 0) - w0), waits: (ctx?.waits.count ?? 0) - n0,
    });
    if (launchTiming.timer) {
      for (const [name, t] of launchTiming.timer.collect()) {
        const row = kernelTimes.get(name) ?? { ms: 0, count: 0 };
        row.ms += t.ms;
        row.count += t.count;
        kernelTimes.set(name, row);
      }
      kernelSteps++;
      launchTiming.timer = null;
    }
    say(formatLogLine(record));
    metrics.push(record);
    phases.push({ ...phaseSec });
    phaseSec.forward = phaseSec.backward = phaseSec.optimizer = 0;
    if (profiler) {
      kinds.push({ forward: profiler.forward, backward: profiler.backward });
      profiler.reset();
    }
  }
  const normBytes = training.gradNormReadBytes;
  training.dispose();
  kernelTimer?.dispose();
  await dist?.close();
  if (!leader) return;
  const rows = metrics.slice(Math.min(3, metrics.length - 1));
  const tps = rows.map((r) => r.tokensPerSecond).sort((a, b) => a - b)[Math.floor(rows.length / 2)]!;
  const peak = Math.max(...metrics.map((r) => r.peakMemoryBytes));
  const stepTime = rows.map((r) => r.stepTimeSec).sort((a, b) => a - b)[Math.floor(rows.length / 2)]!;
  console.log(`bench train: median tokens/s ${Math.round(tps).toLocaleString('en-US')}, median step ${stepTime.toFixed(3)} s, ` +
    `peak memory ${(peak / 2 ** 30).toFixed(2)} GiB, MFU ${(100 * tps * flopsPerToken(model, S) / 989e12).toFixed(1)}% of 989 TFLOP/s ` +
    `(${((performance.now() - t0) / 1000).toFixed(0)} s in all)`);
  const modelTflops = tps * flopsPerToken(model, S) / 1e12;
  console.log(`bench train: model FLOPs ${modelTflops.toFixed(0)} TFLOP/s: MFU ${(100 * modelTflops / 989).toFixed(1)}% of 989 TFLOP/s (bf16 dense peak), ` +
    `${(100 * modelTflops / gemmCeiling).toFixed(1)}% of the measured GEMM ceiling ${gemmCeiling} TFLOP/s`);
  if (ctx) {
    const counted = perStep.slice(Math.min(3, perStep.length - 1));
    const medOf = (f: (r: (typeof perStep)[number]) => number) => counted.map(f).sort((a, b) => a - b)[Math.floor(counted.length / 2)]!;
    console.log(`bench train: launches per step ${medOf((r) => r.kernels + r.cublasLt)} (kernels ${medOf((r) => r.kernels)}, ` +
      `cuBLASLt ${medOf((r) => r.cublasLt)}); host time per step ${medOf((r) => r.hostMs).toFixed(1)} ms ` +
      `(the step's wall time less the ${medOf((r) => r.waits)} waits on the device${profile ? '; --profile adds waits and marker work' : ''})`);
  }
  const first = metrics[0]!, last = metrics[metrics.length - 1]!;
  console.log(`bench train: peak ${(peak / 2 ** 30).toFixed(2)} GiB measured, ${(estimate.peakBytes / 2 ** 30).toFixed(2)} GiB estimated ` +
    `(moetrain estimate-memory, ${(100 * (estimate.peakBytes / peak - 1)).toFixed(1)}%); persistent ${(last.liveMemoryBytes / 2 ** 30).toFixed(2)} GiB live after the step, ` +
    `${(estimate.persistentBytes / 2 ** 30).toFixed(2)} GiB estimated`);
  console.log(`bench train: reserved ${((last.reservedMemoryBytes ?? 0) / 2 ** 30).toFixed(2)} GiB; system allocations ${first.systemAllocations ?? '-'} after step 1, ${last.systemAllocations ?? '-'} after step ${last.step}`);
  if (profile) {
    const timed = phases.slice(Math.min(3, phases.length - 1));
    const med = (k: StepPhase) => timed.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(timed.length / 2)]! * 1000;
    console.log(`bench train: phases (median ms, synchronised): forward ${med('forward').toFixed(1)}, backward ${med('backward').toFixed(1)}, ` +
      `grad-norm + optimizer ${med('optimizer').toFixed(1)}`);
    printBreakdown(kinds.slice(Math.min(3, kinds.length - 1)), med('forward'), med('backward'), med('optimizer'));
    // The norm reads the gradients whose writers left no squares (src/train/grad_square_sum.ts).
    const bytes = OPTIMIZER_BYTES[recipe];
    const floorMs = (parameterCount(model) * bytes.perParam + normBytes) / HBM_BYTES_PER_SEC * 1000;
    console.log(`bench train: optimizer ${med('optimizer').toFixed(1)} ms against its byte floor ${floorMs.toFixed(1)} ms ` +
      `(Σg² ${(normBytes / 1e9).toFixed(2)} GB read, ${bytes.what}, at 3 TB/s): ` +
      `${(med('optimizer') / floorMs).toFixed(2)}× the floor`);
  }
  if (kernelSteps > 0) printKernelTimes(kernelTimes, kernelSteps, stepTime * 1000);
  for (const { mode, result } of peers) {
    const summary = typeof result === 'string' ? result
      : `${Math.round(result.tokens_per_second).toLocaleString('en-US')} tokens/s, ${result.step_ms.toFixed(1)} ms/step, ` +
        `peak ${result.peak_gib.toFixed(2)} GiB; ours/peer ${(tps / result.tokens_per_second).toFixed(2)}x`;
    console.log(`bench train: PyTorch peer (${mode}): ${summary}`);
  }
}

/**
 * The median step by layer kind, forward and backward (ms); "other" in each phase is the phase's
 * median time less its sections (embedding, norms, residual adds, host work between parts).
 */
function printBreakdown(steps: { forward: KindTimes; backward: KindTimes }[], forwardMs: number, backwardMs: number, optimizerMs: number): void {
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]! * 1000;
  const names: Record<ProfileKind, string> = {
    attention: 'attention', mlp: 'dense MLP', router: 'router + dispatch', experts: 'MoE experts', head: 'lm_head + CE',
    other: 'other (embedding, norms, residuals, host)',
  };
  const parts = PROFILE_KINDS.filter((k) => k !== 'other');
  const fwd = parts.map((k) => med(steps.map((s) => s.forward[k]))), bwd = parts.map((k) => med(steps.map((s) => s.backward[k])));
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const rows: { name: string; f: number | null; b: number | null; total: number }[] = [
    ...parts.map((k, i) => ({ name: names[k], f: fwd[i]!, b: bwd[i]!, total: fwd[i]! + bwd[i]! })),
    { name: names.other, f: forwardMs - sum(fwd), b: backwardMs - sum(bwd), total: forwardMs - sum(fwd) + backwardMs - sum(bwd) },
    { name: 'optimizer (grad-norm + fused AdamW)', f: null, b: null, total: optimizerMs },
  ];
  const step = forwardMs + backwardMs + optimizerMs;
  const cell = (x: number | null, w: number) => (x === null ? '' : x.toFixed(1)).padStart(w);
  console.log('bench train: step by layer kind (median ms, synchronised)');
  console.log(`  ${'part'.padEnd(42)} ${'forward'.padStart(8)} ${'backward'.padStart(9)} ${'total'.padStart(8)} ${'share'.padStart(6)}`);
  for (const r of rows) {
    console.log(`  ${r.name.padEnd(42)} ${cell(r.f, 8)} ${cell(r.b, 9)} ${cell(r.total, 8)} ${(100 * r.total / step).toFixed(1).padStart(5)}%`);
  }
}

interface PeerResult { tokens_per_second: number; step_ms: number; peak_gib: number }

/** The peers of the last runTrainBench call (--recipe both runs them once). */
let lastPeers: { mode: string; result: PeerResult | string }[] | undefined;

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

/**
 * Refuses before any allocation when the memory estimator (parallel/memory_estimate.ts, within a
 * few percent of the measured peak) says the run cannot fit the device: the GPU's memory, or the
 * machine's RAM for --device cpu. Returns the estimate, which the summary prints beside the measured peak.
 */
function refuseIfTooLarge(backend: { kind: 'cpu' | 'cuda' }, cfg: TrainConfig, model: Parameters<typeof estimateMemory>[0]['model'],
                          mesh: { pp: number; dp: number; cp: number; ep: number }, seqLen: number, micro: number, microBatches: number): RankEstimate {
  const [est] = estimateMemory({
    model, mesh, seqLen, microBatchSize: micro, microBatches: Math.max(1, microBatches), precision: cfg.precision, recipe: cfg.recipe,
    device: backend.kind, keepLogits: cfg.keep_logits, recompute: cfg.recompute,
  });
  const have = backend instanceof CudaBackend ? backend.ctx.totalMemoryBytes : os.totalmem();
  if (est!.peakBytes <= have) return est!;
  const gib = (b: number) => (b / 2 ** 30).toFixed(1);
  const where = backend.kind === 'cuda' ? 'this GPU has' : 'this machine has (--device cpu)';
  throw new Error(`bench train needs about ${gib(est!.peakBytes)} GiB (moetrain estimate-memory) but ${where} ${gib(have)} GiB; ` +
    `use fewer --layers, a smaller --batch or --seq_len, or a GPU with more memory`);
}


/** The kernels and cuBLASLt products by device time per step (mean over the timed steps), largest first. */
function printKernelTimes(times: LaunchTimes, steps: number, stepMs: number): void {
  const rows = [...times].map(([name, t]) => ({ name, ms: t.ms / steps, count: t.count / steps })).sort((a, b) => b.ms - a.ms);
  const total = rows.reduce((a, r) => a + r.ms, 0);
  console.log(`bench train: device time by kernel (mean of ${steps} step(s); ${total.toFixed(1)} ms of launches in a ${stepMs.toFixed(1)} ms median step; ` +
    'cuBLASLt products named m×n×k, their input and output dtypes, += where they accumulate)');
  console.log(`  ${'kernel'.padEnd(64)} ${'ms/step'.padStart(8)} ${'launches'.padStart(8)} ${'share'.padStart(6)}`);
  const shown = rows.slice(0, 120);
  for (const r of shown) {
    console.log(`  ${r.name.slice(0, 64).padEnd(64)} ${r.ms.toFixed(2).padStart(8)} ${String(Math.round(r.count * 10) / 10).padStart(8)} ${(100 * r.ms / total).toFixed(1).padStart(5)}%`);
  }
  const rest = rows.slice(shown.length);
  if (rest.length > 0) console.log(`  ${`(${rest.length} more)`.padEnd(64)} ${rest.reduce((a, r) => a + r.ms, 0).toFixed(2).padStart(8)}`);
}
