// Hugging Face checkpoints in and out. moetrain's checkpoint names are HF's DeepseekV2 names
// (models/deepseek_v2_names.ts), so conversion is a dtype change and a file layout change, tensor by tensor (never a whole
// checkpoint in memory):
//   importHf: HF folder (index + shards, or one model.safetensors; bf16/f16/f32) → a moetrain
//             weights folder (model.safetensors in f32 + config.json) that `init_from` starts from.
//   exportHf: moetrain checkpoint (or weights folder) → HF folder: bf16 (default) or f32 shards of
//             bounded size, model.safetensors.index.json, config.json.
// A moetrain checkpoint in the layout-free format (train/checkpoint_format.ts: rank files and an
// index) is verified against its manifest first, then read tensor by tensor, each assembled from
// the ranges the ranks wrote; `init_from` reads it the same way.
// bf16 → f32 → bf16 is exact, so an HF → moetrain → HF round trip is bit-exact.
import fs from 'node:fs';
import path from 'node:path';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../tensor/dtype.js';
import { openShardedSafetensors, ShardedSafetensorsWriter } from '../io/safetensors_index.js';
import { SafetensorsWriter } from '../io/safetensors.js';
import { loadDeepseekV2Config, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { CheckpointDamage, CheckpointReader, firstNonFinite, INDEX_FILE } from './checkpoint_format.js';
import { verifyCheckpoint } from './checkpoint_manifest.js';
import { namedParameters, parameterShapes } from '../models/deepseek_v2_names.js';
import type { DeepseekV2 } from '../models/deepseek_v2.js';

/** IEEE half → f32. */
function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

interface WeightSource {
  shape(name: string): number[] | null;
  readF32(name: string): Float32Array;
  close(): void;
}

/** A moetrain checkpoint folder of rank files, verified; whole tensors assembled from their ranges. */
function openCheckpointWeights(dir: string): WeightSource {
  let reader: CheckpointReader;
  try {
    verifyCheckpoint(dir);
    reader = CheckpointReader.open(dir);
  } catch (e) {
    if (e instanceof CheckpointDamage) throw new Error(`${e.message}; use an intact checkpoint (moetrain check-checkpoint ${dir} says what is wrong)`);
    throw e;
  }
  return {
    shape: (name) => reader.shape(name),
    readF32: (name) => {
      const shape = reader.shape(name)!;
      const data = reader.readRange(name, 0, shape.reduce((a, b) => a * b, 1));
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new Error(`${dir}: tensor ${name} holds ${data[bad]} at element ${bad}; the checkpoint is damaged`);
      return data;
    },
    close: () => reader.close(),
  };
}

/** Opens any folder of weights: an HF folder (index or single file) or a moetrain checkpoint/weights folder. */
export function openWeights(dir: string): WeightSource {
  if (fs.existsSync(path.join(dir, INDEX_FILE))) return openCheckpointWeights(dir);
  const st = openShardedSafetensors(dir);
  return {
    shape: (name) => st.tensors.get(name)?.shape.slice() ?? null,
    readF32: (name) => {
      const t = st.readTensor(name);
      switch (t.dtype) {
        case 'F32': return t.data as Float32Array;
        case 'BF16': return bf16ArrayToF32(t.data as Uint16Array);
        case 'F16': { const u = t.data as Uint16Array; const out = new Float32Array(u.length); for (let i = 0; i < u.length; i++) out[i] = f16ToF32(u[i]!); return out; }
        default: throw new Error(`${dir}: tensor ${name} has dtype ${t.dtype}; expected F32, BF16 or F16 weights`);
      }
    },
    close: () => st.close(),
  };
}

function checkedShape(src: WeightSource, dir: string, name: string, want: readonly number[]): void {
  const have = src.shape(name);
  if (!have) throw new Error(`${dir}: missing tensor ${name}; the checkpoint does not match the model config`);
  if (have.join(',') !== want.join(',')) throw new Error(`${dir}: tensor ${name} has shape [${have}] but the config needs [${want}]`);
}

/** Loads weights from an HF or moetrain folder into a model's (or a model part's) f32 masters (for init_from). */
export function loadWeightsInto(model: DeepseekV2, dir: string): void {
  const src = openWeights(dir);
  try {
    for (const { name, param } of namedParameters(model)) {
      checkedShape(src, dir, name, param.shape);
      param.load(src.readF32(name));
    }
  } finally {
    src.close();
  }
}

/** The config.json beside a checkpoint: in the folder itself or in its run directory. */
export function configBeside(dir: string): string {
  for (const c of [path.join(dir, 'config.json'), path.join(dir, '..', '..', 'config.json')]) if (fs.existsSync(c)) return c;
  throw new Error(`${dir}: no config.json found beside the weights; pass --config path/to/config.json`);
}

export function importHf(hfDir: string, outDir: string, configPath = path.join(hfDir, 'config.json')): void {
  const config = loadDeepseekV2Config(configPath);
  const specs = parameterShapes(config);
  const src = openWeights(hfDir);
  const tmp = `${outDir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    for (const s of specs) checkedShape(src, hfDir, s.name, s.shape);
    const w = SafetensorsWriter.create(path.join(tmp, 'model.safetensors'), specs.map((s) => ({ name: s.name, dtype: 'F32' as const, shape: s.shape })), { format: 'moetrain' });
    for (const s of specs) w.write(s.name, src.readF32(s.name));
    w.finish();
    fs.copyFileSync(configPath, path.join(tmp, 'config.json'));
  } finally {
    src.close();
  }
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(path.resolve(outDir)), { recursive: true });
  fs.renameSync(tmp, outDir);
}

export interface ExportOptions {
  dtype: 'bf16' | 'f32';
  maxShardBytes: number;
  configPath: string;
}

export function exportHf(srcDir: string, outDir: string, opts: ExportOptions): void {
  const config: DeepseekV2Config = loadDeepseekV2Config(opts.configPath);
  const specs = parameterShapes(config);
  const src = openWeights(srcDir);
  const tmp = `${outDir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    for (const s of specs) checkedShape(src, srcDir, s.name, s.shape);
    const st = opts.dtype === 'bf16' ? 'BF16' as const : 'F32' as const;
    const w = ShardedSafetensorsWriter.create(tmp, specs.map((s) => ({ name: s.name, dtype: st, shape: s.shape })), { maxShardBytes: opts.maxShardBytes, metadata: { format: 'pt' } });
    for (const s of specs) {
      const v = src.readF32(s.name);
      w.write(s.name, opts.dtype === 'bf16' ? f32ArrayToBf16(v) : v);
    }
    w.finish();
    fs.copyFileSync(opts.configPath, path.join(tmp, 'config.json'));
  } finally {
    src.close();
  }
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.renameSync(tmp, outDir);
}
