// `moetrain train`: builds the run from the config (or the embedded demo when given nothing),
// prepares the demo corpus if asked, runs the training loop, and ends with a summary line.
// Options: train_options.ts (derived from the training config).
//
// Started by `moetrain launch` (or any launcher with torchrun's environment, or srun), each rank
// runs this command: it joins the others (parallel/init_distributed.ts) and trains with sharded
// parameters; rank 0 prepares the demo data, writes the run folder's files and prints every
// line, the other ranks print nothing but errors.
import fs from 'node:fs';
import path from 'node:path';
import { selectBackend } from '../backend/select.js';
import { applyLaunchEnv } from '../parallel/launch_env.js';
import { initDistributed, type Distributed } from '../parallel/init_distributed.js';
import type { Backend } from '../backend/backend.js';
import { defaultTrainConfig, flagsToOverrides, mergeTrainConfig, readTrainConfigFile, type TrainConfig } from '../train/config.js';
import { loadDeepseekV2Config, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { tinyConfig } from '../models/tiny_config.js';
import { formatHfConfig } from '../models/deepseek_v2_config.js';
import { parameterCount } from '../models/deepseek_v2_weights.js';
import { TokenDataset } from '../data/loader.js';
import { prepareDemoData, DEMO_CORPUS_BYTES } from '../data/demo_data.js';
import { train, type BatchSource } from '../train/trainer.js';
import { loadWeightsInto } from '../train/hf_checkpoint.js';
import { listenForStop, STOP_EXIT_CODE } from '../train/signals.js';
import { runSummary } from './run_summary.js';

export async function trainCommand(flags: Record<string, string>): Promise<void> {
  const { config: configFile, ...rest } = flags;
  let cfg = defaultTrainConfig();
  if (configFile) cfg = mergeTrainConfig(cfg, readTrainConfigFile(configFile), configFile);
  cfg = mergeTrainConfig(cfg, flagsToOverrides(rest), 'command line');
  // Before the backend: the CUDA context takes its device from LOCAL_RANK.
  const launch = applyLaunchEnv();
  checkRunDir(cfg.run_dir);

  const model: DeepseekV2Config = cfg.model === 'tiny' ? tinyConfig() : loadDeepseekV2Config(cfg.model);
  const backend = await selectBackend(cfg.device, { mlaKernels: cfg.mla_kernels, groupedGemm: cfg.grouped_gemm });
  const dist = launch.source === 'none' ? null : await initDistributed(cfg, model, backend);
  try {
    await trainRun(cfg, model, backend, dist);
  } finally {
    await dist?.close();
  }
}

async function trainRun(cfg: TrainConfig, model: DeepseekV2Config, backend: Backend, dist: Distributed | null): Promise<void> {
  const leader = !dist || dist.rank === 0;
  const say = (line: string): void => { if (leader) console.log(line); };
  say(`moetrain: device ${backend.kind} — ${backend.description}${dist ? ` (rank 0 of ${dist.world}; each rank on its LOCAL_RANK's device)` : ''}`);
  say(`moetrain: model ${cfg.model === 'tiny' ? 'tiny (built-in)' : cfg.model}, ${(parameterCount(model) / 1e6).toFixed(2)}M parameters, ${cfg.precision} compute`);

  let dataDir = cfg.data;
  let entropy: number | null = null;
  if (cfg.data === 'demo') {
    // Rank 0 makes the demo folder; the others then find it made and reuse it.
    if (!leader) dist!.comm.barrier();
    const prepared = await prepareDemoData({ runDir: cfg.run_dir, seed: cfg.seed });
    if (leader) dist?.comm.barrier();
    dataDir = prepared.dir;
    entropy = prepared.entropy;
    say(`moetrain: demo corpus ${DEMO_CORPUS_BYTES.toLocaleString('en-US')} bytes (seed ${cfg.seed}), byte-unigram entropy ${entropy.toFixed(4)} nats/token`);
  }
  const dataset = TokenDataset.open({ dir: dataDir, seqLen: cfg.seq_len, seed: cfg.seed });
  if (dataset.vocabSize > model.vocab_size) {
    throw new Error(`data in ${dataDir} uses a vocabulary of ${dataset.vocabSize} tokens but the model has vocab_size ${model.vocab_size}; tokenize with the model's tokenizer`);
  }
  dataset.checkRun({ steps: cfg.steps, globalBatch: cfg.global_batch_size, maxEpochs: cfg.max_epochs });
  const epochs = dataset.epochsFor(cfg.steps, cfg.global_batch_size);
  if (epochs > 1) {
    say(`moetrain: the run reads its data ${epochs.toFixed(2)} times (${dataset.windows.toLocaleString('en-US')} sequences per epoch, a fresh order each epoch)${cfg.max_epochs ? '' : '; --max_epochs caps it'}`);
  }
  const source: BatchSource = {
    vocabSize: dataset.vocabSize,
    batch: (step, micro) => {
      const b = dataset.batch({ step, globalBatch: cfg.global_batch_size, microBatch: cfg.micro_batch_size, microIndex: micro });
      return { inputs: b.inputs, labels: b.labels };
    },
  };
  // config.json beside the checkpoints lets `moetrain convert` export them without more flags.
  const modelConfigJson = formatHfConfig(model);
  if (leader) fs.writeFileSync(path.join(cfg.run_dir, 'config.json'), modelConfigJson);
  const initFrom = cfg.init_from;
  // Ranks of `moetrain launch` get the launcher's forwarded signals (see train/signals.ts).
  const launched = process.env['WORLD_SIZE'] !== undefined;
  const stop = listenForStop({ launched, log: (line) => console.log(line) });
  const rerun = launched ? 'the same moetrain launch command' : `moetrain ${process.argv.slice(2).map(shellWord).join(' ')}`;
  const started = performance.now();
  let result;
  try {
    result = await train({
      config: cfg, model, backend, data: source, log: say, dataFingerprint: dataset.fingerprint, modelConfigJson, stop, ...(dist ? { dist } : {}),
      ...(initFrom ? { initWeights: (m) => { loadWeightsInto(m, initFrom); say(`moetrain: initial weights from ${initFrom}`); } } : {}),
    });
  } finally {
    stop.close();
    dataset.close();
  }
  if (result.stoppedBy) {
    if (result.metrics.length > 0) say(`moetrain: ${runSummary(result.metrics, cfg.global_batch_size * cfg.seq_len, (performance.now() - started) / 1000)}`);
    const where = result.checkpoint ? `checkpoint ${result.checkpoint}; resume with: ${rerun}` : 'no step finished, so there is nothing to resume';
    say(`moetrain: stopped by ${result.stoppedBy} after step ${result.finalStep}; ${where}`);
    process.exitCode = STOP_EXIT_CODE[result.stoppedBy];
    return;
  }
  if (result.metrics.length === 0) {
    say(`moetrain: ${cfg.run_dir} already holds a checkpoint at step ${result.resumedFrom ?? cfg.steps} (the run has ${cfg.steps} steps): nothing to train (delete ${cfg.run_dir}, pass another --run_dir, or raise --steps)`);
  }
  const last = result.metrics[result.metrics.length - 1];
  if (last && entropy !== null) {
    const gap = entropy - last.crossEntropy;
    say(`moetrain: final cross-entropy ${last.crossEntropy.toFixed(4)} nats vs corpus unigram entropy ${entropy.toFixed(4)} nats (${Math.abs(gap).toFixed(4)} ${gap >= 0 ? 'below' : 'above'})`);
  }
  if (result.metrics.length > 0) say(`moetrain: ${runSummary(result.metrics, cfg.global_batch_size * cfg.seq_len, (performance.now() - started) / 1000)}`);
  say(`moetrain: run directory ${cfg.run_dir} (metrics.jsonl, checkpoints/; moetrain plot ${cfg.run_dir} draws the curves)`);
}

/** A word as a POSIX shell reads it back (for the resume command). */
function shellWord(w: string): string {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** Fails early, before any work, when the run directory cannot be created or written. */
function checkRunDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    const probe = path.join(dir, `.write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (e) {
    throw new Error(`run directory ${dir} is not writable (${(e as NodeJS.ErrnoException).code ?? e}); pass --run_dir with a writable path`);
  }
}
