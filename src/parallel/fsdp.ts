// Fully sharded data parallel (ZeRO-3) for DeepSeek-V2. Every rank keeps, between steps, only
// its shard of each unit's flat buffers (fsdp_plan.ts): the f32 master, the compute copy (bf16;
// the master itself when compute is f32), the f32 gradient and Adam's two moments — 18 bytes per
// held element in bf16. A unit's weights exist whole only while it runs:
//
//   forward   gather the unit (all-gather of each flat's compute shard), issue the next unit's
//             gather, run it, release the gathered memory (the last unit stays for its backward).
//   backward  a boundary on the unit's outputs (unit_boundary.ts) gathers it again and allocates
//             its full f32 gradient flat (the parameters' gradients are views into it); a boundary
//             on its inputs, after the unit's backward, reduce-scatters that flat into the gradient
//             shard (adding to earlier micro-batches') and frees it and the weights. The embedding
//             has no input boundary (token ids need no gradient) and its backward reads no
//             weights: finishBackward() reduces it once backward() returns.
//
// Holding (the train config's parallel.hold_weights / hold_grads): with m micro-batches per
// step the above gathers each unit 2·m times and reduce-scatters it m times. hold_weights keeps
// a unit's gathered weights from its first gather until the trainer calls releaseHeld() before
// the optimizer changes the shards (one gather per unit per step); hold_grads keeps its full
// gradient across micro-batches, accumulating them, until reduceHeldGrads() at the end of the
// step (one reduce-scatter per unit per step). Both trade memory for communication: every unit
// of the part is then whole at the peak (memory_estimate.ts counts it). A group of one gathers
// and reduces nothing, so the options change nothing there.
//
// The parameters' compute tensors are views of an evicted storage (tensor/storage.ts) while the
// unit is not gathered, so autograd may keep them saved across the release; using one outside a
// gather is an internal error. Gathers are started (Communicator.allGatherStart): with NCCL the
// next unit's gather runs on the communication stream while this unit computes, and the compute
// stream waits for it (an event, no host wait) just before the unit's first kernel (ready());
// a release waits for a gather still pending, so its memory is never reused under it. A unit's
// gradient reduce-scatter is started likewise after its backward and finished (waited for, added
// to the shard, its full gradient freed) after the previous unit's backward, which it overlaps:
// two units' full gradients are whole at once (memory_estimate.ts counts them).
import type { Backend } from '../backend/backend.js';
import { needsGrad } from '../autograd/tape.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, evictedTensor, contiguousStrides, type Tensor } from '../tensor/tensor.js';
import { bytesPerElement, type DType } from '../tensor/dtype.js';
import { Param } from '../nn/param.js';
import type { AdamSlot } from '../backend/tensor_list.js';
import { DeepseekV2 } from '../models/deepseek_v2.js';
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import type { ModelPart } from '../models/deepseek_v2_weights.js';
import type { ModelUnit, UnitHooks } from '../models/unit_hooks.js';
import type { Communicator, PendingCollective } from './communicator.js';
import { heldRange, planShards, type FlatMember, type FlatPlan, type ShardGroupKind } from './fsdp_plan.js';
import { backwardBoundary } from './unit_boundary.js';

/** The groups the flats are sharded over: dense parameters over dp·cp·ep, routed experts over dp·cp. */
export type ShardGroups = Record<ShardGroupKind, Communicator>;

/**
 * This rank's range [start, end) of the flattened full tensor `name` (HF name, experts by global
 * id) of `shape`, held in `tensor` (f32, end − start elements): master weights under the
 * parameter's name, Adam's moments under exp_avg.<name> and exp_avg_sq.<name>.
 */
export interface ShardEntry {
  name: string;
  shape: readonly number[];
  start: number;
  end: number;
  tensor: Tensor;
}

/** What one rank keeps between steps. */
export interface ShardBytes {
  /** Elements of every shard this rank holds (parameters and padding). */
  heldElements: number;
  /** Of those, elements of parameters (the rest is padding). */
  parameterElements: number;
  /** f32 master and compute copy. */
  weights: number;
  /** f32 gradient shards. */
  gradients: number;
  /** Adam's two moments. */
  optimizer: number;
  /** Largest unit's gathered weights plus its full f32 gradient (transient, during its backward). */
  largestUnitTransient: number;
  /** Every sharded unit's gathered weights (hold_weights) and full f32 gradients (hold_grads): whole during a step. */
  heldOverStep: number;
}

const view = (t: Tensor, shape: readonly number[], offset: number): Tensor => t.view(shape, contiguousStrides(shape), t.offset + offset);

/** One flat buffer of a unit: this rank's persistent shards and the transient whole buffers. */
class Flat {
  readonly master: Tensor;
  readonly compute: Tensor;
  readonly grad: Tensor;
  readonly m: Tensor;
  readonly v: Tensor;
  /** [padded] compute dtype: resident while the unit is gathered. */
  readonly gathered: Tensor;
  /** [padded] f32: resident during the unit's backward. */
  readonly fullGrad: Tensor;
  /** The gradient shard holds zeros (no micro-batch reduced since the last zeroGrads). */
  gradIsZero = true;
  /**
   * A group of one holds the whole flat (a launched world of one; expert flats when ep spans
   * the replicas). Then the gathered weights ARE the compute shard and the full gradient IS the
   * gradient shard: a gather, a zeroed full gradient and a reduce-scatter would only copy the
   * whole model twice a step (measured on the H100: 12% of the 4-layer bench step), so the
   * group's collectives are skipped and the backward accumulates straight into the shard.
   */
  readonly whole: boolean;
  private wholeGathered = false;
  private wholeInBackward = false;
  /** The gather started and not yet waited for. */
  private pending: PendingCollective | null = null;
  /** The reduce-scatter started and not finished, and the partial sum it writes when the shard already holds one. */
  private reducing: { pending: PendingCollective; part: Tensor | null } | null = null;

  constructor(readonly plan: FlatPlan, readonly comm: Communicator, readonly backend: Backend) {
    const s = plan.shardSize;
    const zeros = (dtype: DType): Tensor => { const t = keep(emptyTensor(backend, [s], dtype)); backend.fill(t, 0); return t; };
    this.master = zeros('f32');
    this.compute = plan.dtype === 'f32' ? this.master : zeros(plan.dtype);
    this.grad = zeros('f32');
    this.m = zeros('f32');
    this.v = zeros('f32');
    this.whole = comm.size === 1;
    if (this.whole && plan.padded !== s) throw new Error(`internal: a flat of a group of one is padded to ${plan.padded}, its shard holds ${s}`);
    this.gathered = keep(this.whole ? view(this.compute, [s], 0) : evictedTensor(backend, [plan.padded], plan.dtype));
    this.fullGrad = keep(this.whole ? view(this.grad, [s], 0) : evictedTensor(backend, [plan.padded], 'f32'));
  }

  get isGathered(): boolean { return this.whole ? this.wholeGathered : this.gathered.storage.resident; }
  /** Between beginGrad() and reduceGrad() (a full gradient being reduced is no longer in backward). */
  get inBackward(): boolean { return this.whole ? this.wholeInBackward : this.fullGrad.storage.resident && this.reducing === null; }

  gather(): void {
    if (this.whole) { this.wholeGathered = true; return; }
    this.gathered.storage.restore();
    this.pending = this.comm.allGatherStart(this.gathered, this.compute);
  }

  /** Orders the started gather before the kernels queued from now on (they may read the weights). */
  ready(): void {
    this.pending?.wait();
    this.pending = null;
  }

  release(): void {
    if (this.whole) { this.wholeGathered = false; return; }
    this.ready(); // the gathered memory is reused only after the gather wrote it
    this.gathered.storage.evict();
  }

  beginGrad(): void {
    if (this.whole) { this.wholeInBackward = true; return; } // the shard accumulates (zeroed by the optimizer)
    this.fullGrad.storage.restore();
    this.backend.fill(this.fullGrad, 0);
  }

  /**
   * Starts grad shard += this rank's slice of Σ over the group of the full gradient (straight into
   * the shard while it holds zeros, else into a partial sum); finishReduce() completes it.
   */
  reduceGrad(): void {
    if (this.whole) { this.gradIsZero = false; this.wholeInBackward = false; return; }
    // Kept out of the caller's scope: it lives until finishReduce(), which may come after that scope ends.
    const part = this.gradIsZero ? null : keep(emptyTensor(this.backend, [this.plan.shardSize], 'f32'));
    this.reducing = { pending: this.comm.reduceScatterStart(part ?? this.grad, this.fullGrad), part };
    this.gradIsZero = false;
  }

  /** Orders the started reduce-scatter before later kernels, adds the partial sum, frees the full gradient. */
  finishReduce(): void {
    const r = this.reducing;
    if (!r) return;
    this.reducing = null;
    r.pending.wait();
    if (r.part) {
      this.backend.binary('add', this.grad, this.grad, r.part);
      r.part.dispose();
    }
    this.fullGrad.storage.evict();
  }

  /** Frees the full gradient, if any, without reducing it or adding a reduction in flight (a step that threw). */
  dropGrad(): void {
    if (this.whole) { this.wholeInBackward = false; return; }
    if (this.reducing) {
      this.reducing.pending.wait(); // its buffers are reused only after it
      this.reducing.part?.dispose();
      this.reducing = null;
    }
    if (this.fullGrad.storage.resident) this.fullGrad.storage.evict();
  }

  /** Stores the part of member's full values that this rank holds (master and compute copy). */
  load(member: FlatMember, values: Float32Array): void {
    if (values.length !== member.size) throw new Error(`internal: ${member.name} takes ${member.size} values, got ${values.length}`);
    const r = heldRange(this.plan, member, this.comm.rank);
    if (!r) return;
    const n = r.end - r.start;
    const master = view(this.master, [n], r.shardOffset);
    this.backend.write(master, values.subarray(r.start, r.end));
    if (this.compute !== this.master) {
      const compute = view(this.compute, [n], r.shardOffset);
      this.backend.copy(compute, master);
      compute.dispose();
    }
    master.dispose();
  }

  /**
   * Adam slots over this shard: runs of members with the same weight decay (a run spans the
   * zero padding between its members, which Adam leaves at zero).
   */
  slots(): AdamSlot[] {
    const runs: { lo: number; hi: number; decay: boolean }[] = [];
    for (const member of this.plan.members) {
      const r = heldRange(this.plan, member, this.comm.rank);
      if (!r) continue;
      const lo = r.shardOffset, hi = r.shardOffset + r.end - r.start;
      const last = runs[runs.length - 1];
      if (last && last.decay === member.decay) last.hi = hi;
      else runs.push({ lo, hi, decay: member.decay });
    }
    return runs.map(({ lo, hi, decay }) => {
      const part = (t: Tensor) => keep(view(t, [hi - lo], lo));
      return { param: part(this.master), grad: part(this.grad), m: part(this.m), v: part(this.v), lowp: this.compute === this.master ? null : part(this.compute), decay };
    });
  }

  dispose(): void {
    for (const t of [this.master, this.compute, this.grad, this.m, this.v, this.gathered, this.fullGrad]) t.dispose();
  }
}

class Unit {
  constructor(readonly unit: ModelUnit, readonly flats: Flat[], readonly weightsInBackward: boolean) {}
  get isGathered(): boolean { return this.flats[0]!.isGathered; }
  get inBackward(): boolean { return this.flats[0]!.inBackward; }
}

/** Completes the started reductions of `units`, in order. */
function finishReductions(units: readonly Unit[]): void {
  for (const u of units) for (const f of u.flats) f.finishReduce();
}

const unitName = (u: ModelUnit): string => (u.kind === 'layer' ? `layer ${u.index}` : u.kind);

/** What stays whole across the micro-batches of a step (see the file header); both off: nothing. */
export interface HoldOptions {
  /** Gathered weights stay until releaseHeld(). */
  weights: boolean;
  /** Full gradients accumulate until reduceHeldGrads(). */
  grads: boolean;
}

/** A DeepSeek-V2 model (or part) whose parameters are sharded over `groups`; see the file header. */
export class FullyShardedModel implements UnitHooks {
  readonly model: DeepseekV2;
  private readonly units: Unit[];
  private readonly layerUnit = new Map<number, number>();
  private readonly members = new Map<number, { flat: Flat; member: FlatMember }>();
  private readonly optimizerSlots: AdamSlot[] = [];
  private entries: ShardEntry[] | null = null;
  /** Units whose gradient reduce-scatters are started and not finished (afterBackward). */
  private reducing: Unit[] = [];

  constructor(config: DeepseekV2Config, readonly backend: Backend, computeDtype: DType, part: ModelPart, groups: ShardGroups,
    readonly hold: HoldOptions = { weights: false, grads: false }) {
    const plans = planShards(config, part, computeDtype, { dense: groups.dense.size, expert: groups.expert.size });
    this.units = plans.map((p, i) => {
      if (p.unit.kind === 'layer') this.layerUnit.set(p.unit.index, i);
      const flats = p.flats.map((f) => new Flat(f, groups[f.group], backend));
      for (const flat of flats) for (const member of flat.plan.members) this.members.set(member.index, { flat, member });
      // The embedding's backward scatters rows into its gradient without reading the weights.
      return new Unit(p.unit, flats, p.unit.kind !== 'embed');
    });
    this.model = new DeepseekV2(config, backend, computeDtype, part, (spec, dtype) => this.makeParam(spec.index, spec.shape, dtype));
    this.model.unitHooks = this;
    for (const u of this.units) for (const f of u.flats) this.optimizerSlots.push(...f.slots());
  }

  private makeParam(index: number, shape: readonly number[], dtype: DType): Param {
    const at = this.members.get(index);
    if (!at) throw new Error(`internal: parameter ${index} is in no flat of the sharding plan`);
    const { flat, member } = at;
    if (flat.plan.dtype !== dtype) throw new Error(`internal: ${member.name} computes in ${dtype} but its flat holds ${flat.plan.dtype}`);
    return new Param(shape, {
      value: keep(view(flat.gathered, shape, member.offset)),
      grad: keep(view(flat.fullGrad, shape, member.offset)),
      load: (values) => flat.load(member, values),
    });
  }

  private unitIndex(u: ModelUnit): number {
    const i = u.kind === 'embed' ? (this.units[0]?.unit.kind === 'embed' ? 0 : -1)
      : u.kind === 'head' ? (this.units[this.units.length - 1]?.unit.kind === 'head' ? this.units.length - 1 : -1)
        : this.layerUnit.get(u.index) ?? -1;
    if (i < 0) throw new Error(`internal: the sharded model part has no ${unitName(u)} unit`);
    return i;
  }

  private gather(u: Unit): void { if (!u.isGathered) for (const f of u.flats) f.gather(); }
  /** Gathers u if it is not, and orders its gather before the kernels that follow. */
  private gatherReady(u: Unit): void { this.gather(u); for (const f of u.flats) f.ready(); }
  private release(u: Unit): void { if (u.isGathered) for (const f of u.flats) f.release(); }

  runUnit(unit: ModelUnit, inputs: readonly Tensor[], forward: (inputs: readonly Tensor[]) => Tensor[]): Tensor[] {
    const i = this.unitIndex(unit), u = this.units[i]!, next = this.units[i + 1];
    this.gather(u);
    if (next) this.gather(next); // started before this unit's compute, which it overlaps (see the file header)
    for (const f of u.flats) f.ready();
    const xs = inputs.some(needsGrad) ? backwardBoundary(`${unitName(unit)} input`, inputs, () => this.afterBackward(u)) : inputs;
    let outs: Tensor[];
    try {
      outs = forward(xs);
    } catch (e) {
      this.release(u);
      if (next) this.release(next);
      throw e;
    }
    const backwardFollows = outs.some(needsGrad);
    // The last unit's backward comes next: it keeps its weights rather than gathering them again.
    if (!this.hold.weights && !(backwardFollows && i === this.units.length - 1)) this.release(u);
    return backwardFollows ? backwardBoundary(`${unitName(unit)} output`, outs, () => this.beforeBackward(i)) : outs;
  }

  /** Before unit i's backward: its weights (when its backward reads them) and a zeroed full gradient; prefetch unit i−1. */
  private beforeBackward(i: number): void {
    const u = this.units[i]!, prev = this.units[i - 1];
    if (u.weightsInBackward) this.gatherReady(u);
    if (!u.inBackward) for (const f of u.flats) f.beginGrad();
    if (prev?.weightsInBackward) this.gather(prev);
  }

  /**
   * After a unit's backward: starts the reduce-scatter of its gradient into the shards, finishes
   * the one started before it (which had the unit's backward to overlap), frees the weights
   * (unless held). The unit's full gradient lives until its own reduction is finished.
   */
  private afterBackward(u: Unit): void {
    if (u.inBackward && !this.hold.grads) {
      const earlier = this.reducing;
      for (const f of u.flats) f.reduceGrad();
      this.reducing = [u];
      finishReductions(earlier);
    }
    if (!this.hold.weights) this.release(u);
  }

  /**
   * Call after every backward(): reduces the units whose backward had no input boundary (the
   * embedding), finishes every reduction in flight and releases whatever is still gathered, in
   * the same order on every rank.
   */
  finishBackward(): void {
    for (let i = this.units.length - 1; i >= 0; i--) this.afterBackward(this.units[i]!);
    finishReductions(this.reducing);
    this.reducing = [];
  }

  /**
   * Call once per step after the last micro-batch's backward (before the gradient norm): with
   * hold_grads, reduce-scatters every unit's accumulated full gradient into its shard and frees
   * it, in the same order on every rank; otherwise finishBackward() already did.
   */
  reduceHeldGrads(): void {
    const started: Unit[] = [];
    for (let i = this.units.length - 1; i >= 0; i--) {
      const u = this.units[i]!;
      if (!u.inBackward) continue;
      for (const f of u.flats) f.reduceGrad();
      started.push(u);
    }
    finishReductions(started); // they overlap one another, not compute: the norm comes next
  }

  /**
   * Call when a step's passes are over, before the optimizer changes the shards (the gathered
   * copies would go stale), also when the step threw: releases the held gathered weights, and
   * drops full gradients that were never reduced (a step that threw; the next step's backward
   * zeroes them afresh, while what reached the shards stays). Makes no collective call, so a
   * rank that threw alone cannot wait here for the others.
   */
  releaseHeld(): void {
    for (const u of this.units) {
      this.release(u);
      for (const f of u.flats) f.dropGrad();
    }
    this.reducing = [];
  }

  /** The optimizer's slots: runs of this rank's shards (fixed for the run). */
  adamSlots(): AdamSlot[] { return this.optimizerSlots; }

  /** This rank's gradient shards, whole (their padding is zero): Σ g² over them is this rank's part of the norm. */
  gradShards(): Tensor[] {
    return this.units.flatMap((u) => u.flats.map((f) => f.grad));
  }

  /** Zeroes the gradient shards. */
  zeroGrads(): void {
    for (const u of this.units) for (const f of u.flats) this.backend.fill(f.grad, 0);
    this.markGradsZeroed();
  }

  /** Records that the gradient shards hold zeros (the optimizer's fused update zeroes every slot, and the padding is never written). */
  markGradsZeroed(): void {
    for (const u of this.units) for (const f of u.flats) f.gradIsZero = true;
  }

  /** Refreshes the compute shards from the masters (after masters were loaded directly, e.g. from a checkpoint). */
  syncCompute(): void {
    for (const u of this.units) for (const f of u.flats) if (f.compute !== f.master) this.backend.copy(f.compute, f.master);
  }

  /** This rank's ranges of every master weight and Adam moment (for checkpoints); the tensors stay owned here. */
  shardEntries(): ShardEntry[] {
    if (this.entries) return this.entries;
    const masters: ShardEntry[] = [], moments: ShardEntry[] = [];
    for (const u of this.units) {
      for (const f of u.flats) {
        for (const member of f.plan.members) {
          const r = heldRange(f.plan, member, f.comm.rank);
          if (!r) continue;
          const entry = (name: string, t: Tensor): ShardEntry => ({ name, shape: member.shape, start: r.start, end: r.end, tensor: keep(view(t, [r.end - r.start], r.shardOffset)) });
          masters.push(entry(member.name, f.master));
          moments.push(entry(`exp_avg.${member.name}`, f.m), entry(`exp_avg_sq.${member.name}`, f.v));
        }
      }
    }
    this.entries = [...masters, ...moments];
    return this.entries;
  }

  /** What this rank keeps between steps, its largest transient unit and what it holds over a step. */
  bytes(): ShardBytes {
    const out: ShardBytes = { heldElements: 0, parameterElements: 0, weights: 0, gradients: 0, optimizer: 0, largestUnitTransient: 0, heldOverStep: 0 };
    for (const u of this.units) {
      let transient = 0;
      for (const f of u.flats) {
        const s = f.plan.shardSize;
        out.heldElements += s;
        for (const member of f.plan.members) {
          const r = heldRange(f.plan, member, f.comm.rank);
          if (r) out.parameterElements += r.end - r.start;
        }
        out.weights += s * 4 + (f.compute === f.master ? 0 : s * bytesPerElement(f.plan.dtype));
        out.gradients += s * 4;
        out.optimizer += s * 8;
        if (f.whole) continue; // a group of one gathers nothing
        transient += f.plan.padded * (bytesPerElement(f.plan.dtype) + 4);
        out.heldOverStep += f.plan.padded * ((this.hold.weights ? bytesPerElement(f.plan.dtype) : 0) + (this.hold.grads ? 4 : 0));
      }
      out.largestUnitTransient = Math.max(out.largestUnitTransient, transient);
    }
    return out;
  }

  dispose(): void {
    this.model.dispose();
    for (const s of this.optimizerSlots) for (const t of [s.param, s.grad, s.m, s.v, s.lowp]) t?.dispose();
    for (const e of this.entries ?? []) e.tensor.dispose();
    for (const u of this.units) for (const f of u.flats) f.dispose();
  }
}
