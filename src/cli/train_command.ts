// `moetrain train`: builds the run from the config (or the embedded demo when given nothing),
// prepares the demo corpus if asked, and runs the training loop.
import fs from 'node:fs';
import path from 'node:path';
import { selectBackend } from '../backend/select.js';
import { defaultTrainConfig, flagsToOverrides, mergeTrainConfig, readTrainConfigFile, type TrainConfig } from '../train/config.js';
import { loadDeepseekV2Config, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { tinyConfig } from '../models/tiny_config.js';
import { formatHfConfig } from '../models/deepseek_v2_config.js';
import { parameterCount } from '../models/deepseek_v2_weights.js';
import { TokenDataset } from '../data/loader.js';
import { demoCorpus, unigramEntropyNats } from '../data/demo_corpus.js';
import { encodeBytes } from '../data/byte_tokenizer.js';
import { tokenizeCorpus } from '../data/tokenize.js';
import { train, type BatchSource } from '../train/trainer.js';
import { loadWeightsInto } from '../train/hf_checkpoint.js';
import { listenForStop, STOP_EXIT_CODE } from '../train/signals.js';

const DEMO_BYTES = 600_000;

export async function trainCommand(flags: Record<string, string>): Promise<void> {
  const { config: configFile, ...rest } = flags;
  let cfg = defaultTrainConfig();
  if (configFile) cfg = mergeTrainConfig(cfg, readTrainConfigFile(configFile), configFile);
  cfg = mergeTrainConfig(cfg, flagsToOverrides(rest), 'command line');
  checkRunDir(cfg.run_dir);

  const model: DeepseekV2Config = cfg.model === 'tiny' ? tinyConfig() : loadDeepseekV2Config(cfg.model);
  const backend = await selectBackend(cfg.device);
  console.log(`moetrain: device ${backend.kind} — ${backend.description}`);
  console.log(`moetrain: model ${cfg.model === 'tiny' ? 'tiny (built-in)' : cfg.model}, ${(parameterCount(model) / 1e6).toFixed(2)}M parameters, ${cfg.precision} compute`);

  let dataDir = cfg.data;
  let entropy: number | null = null;
  if (cfg.data === 'demo') {
    const prepared = await prepareDemoData(cfg);
    dataDir = prepared.dir;
    entropy = prepared.entropy;
    console.log(`moetrain: demo corpus ${DEMO_BYTES.toLocaleString('en-US')} bytes (seed ${cfg.seed}), byte-unigram entropy ${entropy.toFixed(4)} nats/token`);
  }
  const dataset = TokenDataset.open({ dir: dataDir, seqLen: cfg.seq_len, seed: cfg.seed });
  if (dataset.vocabSize > model.vocab_size) {
    throw new Error(`data in ${dataDir} uses a vocabulary of ${dataset.vocabSize} tokens but the model has vocab_size ${model.vocab_size}; tokenize with the model's tokenizer`);
  }
  dataset.checkRun({ steps: cfg.steps, globalBatch: cfg.global_batch_size, maxEpochs: 1 });
  const source: BatchSource = {
    vocabSize: dataset.vocabSize,
    batch: (step, micro) => {
      const b = dataset.batch({ step, globalBatch: cfg.global_batch_size, microBatch: cfg.micro_batch_size, microIndex: micro });
      return { inputs: b.inputs, labels: b.labels };
    },
  };
  // config.json beside the checkpoints lets `moetrain convert` export them without more flags.
  const modelConfigJson = formatHfConfig(model);
  fs.writeFileSync(path.join(cfg.run_dir, 'config.json'), modelConfigJson);
  const initFrom = cfg.init_from;
  // Ranks of `moetrain launch` get the launcher's forwarded signals (see train/signals.ts).
  const launched = process.env['WORLD_SIZE'] !== undefined;
  const stop = listenForStop({ launched, log: (line) => console.log(line) });
  const rerun = launched ? 'the same moetrain launch command' : `moetrain ${process.argv.slice(2).map(shellWord).join(' ')}`;
  let result;
  try {
    result = await train({
      config: cfg, model, backend, data: source, log: (line) => console.log(line), dataFingerprint: dataset.fingerprint, modelConfigJson, stop,
      ...(initFrom ? { initWeights: (m) => { loadWeightsInto(m, initFrom); console.log(`moetrain: initial weights from ${initFrom}`); } } : {}),
    });
  } finally {
    stop.close();
    dataset.close();
  }
  if (result.stoppedBy) {
    const where = result.checkpoint ? `checkpoint ${result.checkpoint}; resume with: ${rerun}` : 'no step finished, so there is nothing to resume';
    console.log(`moetrain: stopped by ${result.stoppedBy} after step ${result.finalStep}; ${where}`);
    process.exitCode = STOP_EXIT_CODE[result.stoppedBy];
    return;
  }
  if (result.metrics.length === 0) {
    console.log(`moetrain: ${cfg.run_dir} already holds a checkpoint at step ${result.resumedFrom ?? cfg.steps} (the run has ${cfg.steps} steps): nothing to train (delete ${cfg.run_dir}, pass another --run_dir, or raise --steps)`);
  }
  const last = result.metrics[result.metrics.length - 1];
  if (last && entropy !== null) {
    const gap = entropy - last.crossEntropy;
    console.log(`moetrain: final cross-entropy ${last.crossEntropy.toFixed(4)} nats vs corpus unigram entropy ${entropy.toFixed(4)} nats (${Math.abs(gap).toFixed(4)} ${gap >= 0 ? 'below' : 'above'})`);
  }
  console.log(`moetrain: run directory ${cfg.run_dir} (metrics.jsonl, checkpoints/)`);
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

/** Writes the generated demo corpus and its byte tokens under the run directory (once). */
async function prepareDemoData(cfg: TrainConfig): Promise<{ dir: string; entropy: number }> {
  const root = path.join(cfg.run_dir, 'demo-data');
  const textFile = path.join(root, `demo-seed${cfg.seed}.txt`);
  const tokensDir = path.join(root, 'tokens');
  const corpus = demoCorpus({ seed: cfg.seed, targetBytes: DEMO_BYTES });
  fs.mkdirSync(root, { recursive: true });
  if (!fs.existsSync(textFile)) {
    fs.writeFileSync(`${textFile}.partial`, corpus.text);
    fs.renameSync(`${textFile}.partial`, textFile);
  }
  await tokenizeCorpus({ inputs: [textFile], output: tokensDir, tokenizer: { kind: 'bytes' }, workers: 0, progress: false });
  return { dir: tokensDir, entropy: unigramEntropyNats(encodeBytes(corpus.text)) };
}
