// The device mesh: the world's ranks laid out as a pp × dp × cp × ep grid, ep innermost,
//   rank = ((pp_i·dp + dp_i)·cp + cp_i)·ep + ep_i,
// so the ranks of one expert-parallel group are neighbours (on one machine where possible).
// A group "along" some dimensions is the set of ranks that agree on every other coordinate.
//
// Who holds what: the batch is split over dp·ep (each data rank reads its own micro-batches;
// ep ranks hold different tokens, which is why dense gradients are summed over dp·cp·ep),
// cp splits each sequence, pp splits the layers.

import { minMicroBatches, virtualStages } from './schedule.js';
import type { ScheduleKind } from './schedule_sim.js';

/** The `parallel` section of the training config. */
export interface ParallelConfig {
  /** Pipeline stages (the layers are split over them). */
  pp: number;
  /** Data-parallel replicas (each with its own micro-batches; parameters sharded over them). */
  dp: number;
  /** Context-parallel ranks (each sequence split over them). */
  cp: number;
  /** Expert-parallel ranks (each holds n_routed_experts / ep experts and its own tokens). */
  ep: number;
  /** Seconds a collective, or the start-up rendezvous, waits for the other ranks before it fails. */
  collective_timeout_sec: number;
  /** The pipeline schedule when pp > 1 (schedule.ts). */
  schedule: ScheduleKind;
  /** Layers per virtual stage (pp for 1f1b, 2·pp for dualpipev), overriding the cost-balanced split (stages.ts); null: balanced. */
  stages: number[] | null;
  /** Keep each unit's gathered weights from its first gather to the step's end: one all-gather per unit per step (fsdp.ts). */
  hold_weights: boolean;
  /** Accumulate each unit's full f32 gradient over the micro-batches: one reduce-scatter per unit per step (fsdp.ts). */
  hold_grads: boolean;
}

export type MeshDim = 'pp' | 'dp' | 'cp' | 'ep';
/** Outermost first. */
export const MESH_DIMS: readonly MeshDim[] = ['pp', 'dp', 'cp', 'ep'];

export type MeshSizes = Record<MeshDim, number>;
/** A rank's position on each dimension, 0 … size−1. */
export type MeshCoords = Record<MeshDim, number>;

export function meshWorld(s: MeshSizes): number {
  return s.pp * s.dp * s.cp * s.ep;
}

export function meshRankOf(s: MeshSizes, c: MeshCoords): number {
  return ((c.pp * s.dp + c.dp) * s.cp + c.cp) * s.ep + c.ep;
}

export function meshCoordsOf(s: MeshSizes, rank: number): MeshCoords {
  if (!(Number.isInteger(rank) && rank >= 0 && rank < meshWorld(s))) throw new Error(`internal: rank ${rank} outside a mesh of ${meshWorld(s)}`);
  const ep = rank % s.ep;
  let r = (rank - ep) / s.ep;
  const cp = r % s.cp;
  r = (r - cp) / s.cp;
  const dp = r % s.dp;
  return { pp: (r - dp) / s.dp, dp, cp, ep };
}

/**
 * The ranks of `rank`'s group along `dims`: every rank whose coordinates on the other
 * dimensions equal rank's, in ascending order (so lexicographic in pp, dp, cp, ep order).
 */
export function meshGroupRanks(s: MeshSizes, rank: number, dims: readonly MeshDim[]): number[] {
  const me = meshCoordsOf(s, rank);
  const out: number[] = [];
  for (let r = 0; r < meshWorld(s); r++) {
    const c = meshCoordsOf(s, r);
    if (MESH_DIMS.every((d) => dims.includes(d) || c[d] === me[d])) out.push(r);
  }
  return out;
}

/** "pp1·dp2·cp1·ep2" */
export function meshName(s: MeshSizes): string {
  return `pp${s.pp}·dp${s.dp}·cp${s.cp}·ep${s.ep}`;
}

/** What the mesh must divide: the model's layers and experts, and the batch's micro-batches. */
export interface MeshWorkload {
  numLayers: number;
  nRoutedExperts: number;
  globalBatch: number;
  microBatch: number;
  /** Tokens per sequence: cp must divide seq_len / 2 (the zigzag layout's 2·cp chunks). */
  seqLen?: number;
  /** The pipeline schedule (checked when pp > 1): its layer budget and micro-batch minimum. */
  schedule?: ScheduleKind;
}

/**
 * Checks the mesh against the world size and the workload, before any rank starts work; each
 * problem is one line with the numbers and the fix.
 */
export function validateMesh(s: MeshSizes, world: number, w: MeshWorkload): void {
  for (const d of MESH_DIMS) {
    if (!(Number.isInteger(s[d]) && s[d] > 0)) throw new Error(`--parallel.${d} must be a positive integer, got ${s[d]}`);
  }
  const product = meshWorld(s);
  if (product !== world) {
    throw new Error(`pp·dp·cp·ep = ${s.pp}·${s.dp}·${s.cp}·${s.ep} = ${product} ≠ WORLD_SIZE ${world}; choose --parallel.pp/dp/cp/ep whose product is ${world}, or launch ${product} processes`);
  }
  if (w.nRoutedExperts % s.ep !== 0) {
    throw new Error(`n_routed_experts % ep = ${w.nRoutedExperts} % ${s.ep} = ${w.nRoutedExperts % s.ep} ≠ 0; choose --parallel.ep dividing ${w.nRoutedExperts}`);
  }
  if (w.numLayers < s.pp) {
    throw new Error(`num_hidden_layers = ${w.numLayers} < pp = ${s.pp}: every pipeline stage needs a layer; lower --parallel.pp to at most ${w.numLayers}`);
  }
  if (s.pp > 1 && w.schedule === 'dualpipev' && w.numLayers < virtualStages('dualpipev', s.pp)) {
    throw new Error(`num_hidden_layers = ${w.numLayers} < 2·pp = ${2 * s.pp}: the dualpipev schedule gives every rank two chunks of layers; lower --parallel.pp to at most ${Math.floor(w.numLayers / 2)} or use --parallel.schedule 1f1b`);
  }
  if (w.seqLen !== undefined && s.cp > 1 && w.seqLen % (2 * s.cp) !== 0) {
    throw new Error(`seq_len % (2·cp) = ${w.seqLen} % (2·${s.cp}) = ${w.seqLen % (2 * s.cp)} ≠ 0: the zigzag layout splits each sequence into 2·cp equal chunks; choose --parallel.cp dividing seq_len / 2 = ${w.seqLen / 2} or a seq_len that is a multiple of ${2 * s.cp}`);
  }
  const micro = w.globalBatch / w.microBatch;
  const dataRanks = s.dp * s.ep;
  if (micro % dataRanks !== 0) {
    throw new Error(`micro-batches % (dp·ep) = (${w.globalBatch}/${w.microBatch}) % (${s.dp}·${s.ep}) = ${micro} % ${dataRanks} = ${micro % dataRanks} ≠ 0; each data rank needs whole micro-batches: make global_batch_size / micro_batch_size a multiple of ${dataRanks}`);
  }
  // Each replica's micro-batches run through the pipeline.
  const least = w.schedule ? minMicroBatches(w.schedule, s.pp) : 1;
  if (s.pp > 1 && micro / dataRanks < least) {
    throw new Error(`the ${w.schedule} schedule needs ≥ 2·pp − 1 = 2·${s.pp} − 1 = ${least} micro-batches per replica, got (global_batch_size / micro_batch_size) / (dp·ep) = (${w.globalBatch}/${w.microBatch}) / (${s.dp}·${s.ep}) = ${micro / dataRanks}; raise global_batch_size to ${least * dataRanks * w.microBatch} (or lower micro_batch_size), or use --parallel.schedule 1f1b`);
  }
}

/** The groups the parallel code uses, each as the ascending list of its world ranks. */
export interface MeshGroupRanks {
  pp: number[];
  dp: number[];
  cp: number[];
  ep: number[];
  /** Dense parameters are sharded over dp·cp·ep. */
  denseShard: number[];
  /** Expert parameters are sharded over dp·cp (each ep rank owns different experts). */
  expertShard: number[];
  /** The ranks that read different micro-batches: dp·ep (loss averages, global-batch load balance). */
  data: number[];
}

/** One rank's view of the mesh. */
export class Mesh {
  readonly coords: MeshCoords;
  readonly world: number;

  constructor(readonly sizes: MeshSizes, readonly rank: number) {
    this.world = meshWorld(sizes);
    this.coords = meshCoordsOf(sizes, rank);
  }

  groupRanks(dims: readonly MeshDim[]): number[] {
    return meshGroupRanks(this.sizes, this.rank, dims);
  }

  groups(): MeshGroupRanks {
    return {
      pp: this.groupRanks(['pp']),
      dp: this.groupRanks(['dp']),
      cp: this.groupRanks(['cp']),
      ep: this.groupRanks(['ep']),
      denseShard: this.groupRanks(['dp', 'cp', 'ep']),
      expertShard: this.groupRanks(['dp', 'cp']),
      data: this.groupRanks(['dp', 'ep']),
    };
  }

  get name(): string { return meshName(this.sizes); }
}
