// Where every parameter lives under fully sharded data parallelism (ZeRO-3), computed from the
// model's structure alone (no memory). The model is cut into units (the embedding, each decoder
// layer, the final norm with lm_head); each unit's parameters are laid end to end in flat
// buffers, one per (shard group, dtype): dense parameters are sharded over dp·cp·ep, the routed
// experts this rank owns over dp·cp, and the f32 router (in bf16 runs) has a flat of its own
// because its compute copy is f32. Each member starts at a multiple of ALIGN_ELEMENTS (so the
// gathered weights the kernels read are as aligned as an allocation), a flat is padded with
// zeros to a multiple of ALIGN_ELEMENTS times its group's size, and rank r of the group holds
// elements [r·shard, (r+1)·shard): one all-gather and one reduce-scatter per flat move a unit.
import type { DType } from '../tensor/dtype.js';
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { namedParameters } from '../models/deepseek_v2_names.js';
import { buildWeights, type DeepseekV2Weights, type ModelPart, type ParamSpec } from '../models/deepseek_v2_weights.js';
import type { ModelUnit } from '../models/unit_hooks.js';

/** Which group a flat is sharded over: dense parameters over dp·cp·ep, routed experts over dp·cp. */
/** Members and shard boundaries start at multiples of this many elements (256 bytes of bf16). */
export const ALIGN_ELEMENTS = 128;

const alignUp = (n: number): number => Math.ceil(n / ALIGN_ELEMENTS) * ALIGN_ELEMENTS;

export type ShardGroupKind = 'dense' | 'expert';

/** One parameter's place in its unit's flat buffer. */
export interface FlatMember {
  /** HF name (experts by global id). */
  name: string;
  /** Position in the whole model's order (ParamSpec.index), the key the model's parameter maker passes. */
  index: number;
  shape: readonly number[];
  /** First element in the flat buffer. */
  offset: number;
  /** Elements. */
  size: number;
  /** Weight decay applies (matrices; norm weights, rank 1, are not decayed). */
  decay: boolean;
}

export interface FlatPlan {
  group: ShardGroupKind;
  /** The compute dtype of its members (what is gathered). */
  dtype: DType;
  members: FlatMember[];
  /** Elements up to the end of the last member (members and the gaps between them). */
  used: number;
  /** `used` padded with zeros to a multiple of ALIGN_ELEMENTS · group size. */
  padded: number;
  /** padded / group size: the elements every rank of the group holds. */
  shardSize: number;
}

export interface UnitPlan {
  unit: ModelUnit;
  flats: FlatPlan[];
}

export interface ShardGroupSizes {
  dense: number;
  expert: number;
}

/** The part of member's flattened tensor [start, end) that shard `rank` holds, at shardOffset in the shard; null when none. */
export function heldRange(flat: FlatPlan, member: FlatMember, rank: number): { start: number; end: number; shardOffset: number } | null {
  const lo = rank * flat.shardSize, hi = lo + flat.shardSize;
  const a = Math.max(lo, member.offset), b = Math.min(hi, member.offset + member.size);
  if (a >= b) return null;
  return { start: a - member.offset, end: b - member.offset, shardOffset: a - lo };
}

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The units of a model part in forward order, each with its parameters (model order). */
function unitsOf(w: DeepseekV2Weights<ParamSpec>): { unit: ModelUnit; params: { name: string; spec: ParamSpec }[] }[] {
  const named = (part: DeepseekV2Weights<ParamSpec>) => namedParameters(part).map(({ name, param }) => ({ name, spec: param }));
  const none = { embed: null, layers: [], norm: null, lmHead: null };
  const out: { unit: ModelUnit; params: { name: string; spec: ParamSpec }[] }[] = [];
  if (w.embed) out.push({ unit: { kind: 'embed' }, params: named({ ...none, embed: w.embed }) });
  for (const l of w.layers) out.push({ unit: { kind: 'layer', index: l.index }, params: named({ ...none, layers: [l] }) });
  if (w.norm || w.lmHead) out.push({ unit: { kind: 'head' }, params: named({ ...none, norm: w.norm, lmHead: w.lmHead }) });
  return out;
}

/**
 * The flat buffers of every unit of `part` with compute dtype `computeDtype`, for shard groups
 * of the given sizes. Flats appear in the order of their first member; members in model order.
 */
export function planShards(c: DeepseekV2Config, part: ModelPart, computeDtype: DType, sizes: ShardGroupSizes): UnitPlan[] {
  for (const [k, n] of Object.entries(sizes)) if (!(Number.isInteger(n) && n > 0)) throw new Error(`internal: ${k} shard group size ${n}`);
  const w = buildWeights(c, part, (s) => s);
  const expertSpecs = new Set<ParamSpec>();
  for (const l of w.layers) for (const e of l.moe?.experts ?? []) for (const s of [e.gate, e.up, e.down]) expertSpecs.add(s);
  return unitsOf(w).map(({ unit, params }) => {
    const flats: FlatPlan[] = [];
    for (const { name, spec } of params) {
      const group: ShardGroupKind = expertSpecs.has(spec) ? 'expert' : 'dense';
      const dtype: DType = spec.dtype === 'f32' ? 'f32' : computeDtype;
      let flat = flats.find((f) => f.group === group && f.dtype === dtype);
      if (!flat) { flat = { group, dtype, members: [], used: 0, padded: 0, shardSize: 0 }; flats.push(flat); }
      const size = numel(spec.shape), offset = alignUp(flat.used);
      flat.members.push({ name, index: spec.index, shape: spec.shape, offset, size, decay: spec.shape.length >= 2 });
      flat.used = offset + size;
    }
    for (const f of flats) {
      const g = sizes[f.group];
      f.shardSize = alignUp(Math.ceil(f.used / g));
      f.padded = f.shardSize * g;
    }
    return { unit, flats };
  });
}
