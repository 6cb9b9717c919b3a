// The pipeline executor: runs this rank's actions of one optimizer step's schedule
// (schedule.ts) on its model parts, one per virtual stage it holds (1F1B: one; DualPipeV: two,
// the V's way down and way back). Activations [B·S, D] and their gradients travel in the
// compute dtype through the pipeline group's send/recv/sendRecv; a stage's input arrives as a
// leaf whose gradient, once its backward has run, is what goes back. Consecutive stages on one
// rank (the turn of the V) hand over locally, detached the same way, so every backward action
// back-propagates exactly one stage.
//
// Losses: the stage that holds the head computes (cross-entropy + its layers' load-balance
// loss) / m per micro-batch and back-propagates from it; every other stage back-propagates
// from its output, seeded with the received gradient, and from its own layers' load-balance
// loss seeded with 1/m, in one pass. The parameters' f32 gradients accumulate over the step's
// micro-batches exactly as in one process; the norm, clipping and optimizer stay the caller's.
// An F&B pair runs its forward, then its backward (the CPU has one stream; a GPU may overlap them).
//
// Shape legend: B micro-batch size, S sequence length, D hidden size.
import type { Backend } from '../backend/backend.js';
import { backwardFrom } from '../autograd/backward.js';
import { fromHost, toHostF32 } from '../ops/create.js';
import { add, scale } from '../ops/elementwise.js';
import { keep, tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import type { DeepseekV2, LoadBalance } from '../models/deepseek_v2.js';
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import type { ModelPart } from '../models/deepseek_v2_weights.js';
import type { Communicator } from './communicator.js';
import { stagesOfRank, virtualStages } from './schedule.js';
import type { Action, Pass, Schedule, ScheduleKind, Transfer } from './schedule_sim.js';
import { splitStages } from './stages.js';

/**
 * The model parts of pipeline rank `rank`, one per virtual stage it holds (chunk order): the
 * layers of splitStages over the schedule's virtual stages (`override`: layer counts per virtual
 * stage), the embedding with stage 0, the head with the last, routed experts [first, end).
 */
export function pipelineParts(c: DeepseekV2Config, kind: ScheduleKind, pp: number, rank: number, seqLen: number, experts: readonly [number, number], override?: readonly number[]): { stage: number; part: ModelPart }[] {
  const V = virtualStages(kind, pp), L = c.num_hidden_layers;
  if (kind === 'dualpipev' && L < V) {
    throw new Error(`the dualpipev schedule splits the layers into 2·pp = 2·${pp} = ${V} chunks, but the model has ${L} layers; lower --parallel.pp to at most ${Math.floor(L / 2)} or use --parallel.schedule 1f1b`);
  }
  const stages = splitStages(c, V, seqLen, override);
  return stagesOfRank(kind, pp, rank).map((stage) => ({
    stage,
    part: { layers: [stages[stage]!.first, stages[stage]!.end], experts, embed: stage === 0, head: stage === V - 1 },
  }));
}

/** A model part that runs one virtual stage. */
export interface PipelineChunk {
  stage: number;
  model: DeepseekV2;
}

export interface MicroBatchTokens {
  /** Token ids i32 [B·S]. */
  inputs: Int32Array;
  /** Next-token labels i32 [B·S] (< 0: not counted). */
  labels: Int32Array;
  /** What the cross-entropy divides by: the whole micro-batch's label count under context parallelism; default the labels ≥ 0 here. */
  labelCount?: number;
}

export interface PipelineStep {
  schedule: Schedule;
  /** The pipeline group: its rank r runs schedule.actions[r]. */
  comm: Communicator;
  /** This rank's model parts, one per stage of schedule.stageRank that names this rank. */
  chunks: readonly PipelineChunk[];
  /** Micro-batch mb's tokens; asked for only by the stages that hold the embedding or the head. */
  batch(mb: number): MicroBatchTokens;
  microBatchSize: number;
  seqLen: number;
  loadBalance: LoadBalance;
  /** Runs after each backward pass of `stage` (fully sharded parts reduce the embedding's gradient here: FullyShardedModel.finishBackward). */
  afterBackward?: (stage: number) => void;
}

/** How long one pass took (ms). */
export interface PassTiming {
  dir: 'forward' | 'backward';
  mb: number;
  stage: number;
  ms: number;
}

export interface PipelineStepResult {
  /** Σ over micro-batches of the mean cross-entropy, on the rank that holds the head; null elsewhere. */
  crossEntropySum: number | null;
  /** Σ over micro-batches of this rank's layers' load-balance losses (the step's is the sum over the pipeline group). */
  loadBalanceSum: number;
  /** Time in passes, time blocked in transfers, and the whole step on this rank (host ms; on a GPU, passes are their enqueue time). */
  computeMs: number;
  transferMs: number;
  totalMs: number;
  passes: PassTiming[];
}

/** What a forward pass keeps for its backward. */
interface Forward {
  /** The stage's input leaf (null on stage 0, which starts from token ids). */
  input: Tensor | null;
  /** The last stage: (cross-entropy + load balance) / m; others: the output [B·S, D]. */
  root: Tensor;
  /** The stage's load-balance loss [1] (not a root on the last stage, whose loss includes it). */
  loadBalance: Tensor;
}

const actKey = (mb: number, stage: number): string => `a${mb}:${stage}`;
const gradKey = (mb: number, stage: number): string => `g${mb}:${stage}`;

function take<T>(m: Map<string, T>, k: string, what: string): T {
  const v = m.get(k);
  if (v === undefined) throw new Error(`internal: pipeline: ${what} is missing (schedule out of order)`);
  m.delete(k);
  return v;
}

class StepRunner {
  private readonly backend: Backend;
  private readonly chunkOf = new Map<number, DeepseekV2>();
  private readonly lastStage: number;
  private readonly hidden: number;
  private readonly dtype: Tensor['dtype'];
  /** Stage inputs that arrived or were handed over: activation (mb, s) feeds forward(mb, s + 1). */
  private readonly inputs = new Map<string, Tensor>();
  /** Forward state awaiting its backward, by (mb, stage). */
  private readonly forwards = new Map<string, Forward>();
  /** Gradients of stage outputs that arrived or were handed over: gradient (mb, s) feeds backward(mb, s − 1). */
  private readonly outputGrads = new Map<string, Tensor>();
  /** Gradients of stage inputs awaiting their send: gradient (mb, s). */
  private readonly inputGrads = new Map<string, Tensor>();
  private readonly ceSum: Tensor;
  private readonly lbSum: Tensor;
  private readonly lbSeed: Tensor;
  readonly passes: PassTiming[] = [];
  computeMs = 0;
  transferMs = 0;

  constructor(private readonly step: PipelineStep) {
    const { schedule, chunks, comm } = step;
    const first = chunks[0];
    if (!first) throw new Error('internal: pipeline step without a model part');
    this.backend = first.model.backend;
    this.hidden = first.model.config.hidden_size;
    this.dtype = first.model.computeDtype;
    this.lastStage = schedule.stageRank.length - 1;
    const mine = schedule.stageRank.flatMap((r, s) => (r === comm.rank ? [s] : []));
    const given = chunks.map((c) => c.stage).sort((a, b) => a - b);
    if (mine.join() !== given.join()) throw new Error(`internal: pipeline rank ${comm.rank} holds stages [${mine}] but was given parts for [${given}]`);
    if (comm.size !== schedule.pp) throw new Error(`internal: a pipeline group of ${comm.size} ranks for a schedule of ${schedule.pp}`);
    for (const c of chunks) this.chunkOf.set(c.stage, c.model);
    this.ceSum = keep(emptyTensor(this.backend, [1], 'f32'));
    this.lbSum = keep(emptyTensor(this.backend, [1], 'f32'));
    this.backend.fill(this.ceSum, 0);
    this.backend.fill(this.lbSum, 0);
    this.lbSeed = keep(fromHost(this.backend, [1 / schedule.micro], [1], 'f32'));
  }

  run(): PipelineStepResult {
    const t0 = performance.now();
    for (const a of this.step.schedule.actions[this.step.comm.rank]!) this.act(a);
    const left = [...this.inputs.keys(), ...this.forwards.keys(), ...this.outputGrads.keys(), ...this.inputGrads.keys()];
    if (left.length > 0) throw new Error(`internal: pipeline step ended with [${left.join(', ')}] unused`);
    const holdsHead = this.chunkOf.has(this.lastStage);
    const result: PipelineStepResult = {
      crossEntropySum: holdsHead ? toHostF32(this.ceSum)[0]! : null,
      loadBalanceSum: toHostF32(this.lbSum)[0]!,
      computeMs: this.computeMs, transferMs: this.transferMs, totalMs: performance.now() - t0, passes: this.passes,
    };
    this.ceSum.dispose(); this.lbSum.dispose(); this.lbSeed.dispose();
    return result;
  }

  private act(a: Action): void {
    switch (a.op) {
      case 'forward': return this.timed('forward', a.pass, () => this.forward(a.pass));
      case 'backward': return this.timed('backward', a.pass, () => this.backward(a.pass));
      case 'forwardBackward':
        this.timed('forward', a.forward, () => this.forward(a.forward));
        return this.timed('backward', a.backward, () => this.backward(a.backward));
      case 'send': return this.transfer(() => this.step.comm.send(this.outgoing(a.transfer), a.transfer.to), [a.transfer], []);
      case 'recv': {
        const t = this.incoming();
        return this.transfer(() => this.step.comm.recv(t, a.transfer.from), [], [[a.transfer, t]]);
      }
      case 'sendRecv': {
        const t = this.incoming();
        return this.transfer(() => this.step.comm.sendRecv(this.outgoing(a.send), a.send.to, t, a.recv.from), [a.send], [[a.recv, t]]);
      }
      default: return a satisfies never;
    }
  }

  private timed(dir: PassTiming['dir'], p: Pass, fn: () => void): void {
    const t0 = performance.now();
    fn();
    const ms = performance.now() - t0;
    this.computeMs += ms;
    this.passes.push({ dir, mb: p.mb, stage: p.stage, ms });
  }

  private transfer(fn: () => void, sent: Transfer[], received: [Transfer, Tensor][]): void {
    const t0 = performance.now();
    fn();
    this.transferMs += performance.now() - t0;
    for (const t of sent) {
      // An activation stays with its forward state for the backward; a sent gradient is done.
      if (t.kind === 'gradient') take(this.inputGrads, gradKey(t.mb, t.stage), `the gradient of stage ${t.stage}'s input for micro-batch ${t.mb}`).dispose();
    }
    for (const [t, x] of received) {
      if (t.kind === 'activation') this.inputs.set(actKey(t.mb, t.stage), this.leaf(x));
      else this.outputGrads.set(gradKey(t.mb, t.stage), x);
    }
  }

  /** A tensor to send: an activation (the output of its forward) or an input's gradient. */
  private outgoing(t: Transfer): Tensor {
    const k = t.kind === 'activation' ? `${t.mb}:${t.stage}` : gradKey(t.mb, t.stage);
    const x = t.kind === 'activation' ? this.forwards.get(k)?.root : this.inputGrads.get(k);
    if (!x) throw new Error(`internal: pipeline: the ${t.kind} of micro-batch ${t.mb}, stage ${t.stage} is not here to send`);
    return x;
  }

  /** A buffer for a received activation or gradient, [B·S, D] in the compute dtype. */
  private incoming(): Tensor {
    return keep(emptyTensor(this.backend, [this.step.microBatchSize * this.step.seqLen, this.hidden], this.dtype));
  }

  /** x as a stage input: a leaf whose gradient (compute dtype, from zero) is what goes back. */
  private leaf(x: Tensor): Tensor {
    x.requiresGrad = true;
    x.grad = keep(emptyTensor(this.backend, x.shape, x.dtype));
    this.backend.fill(x.grad, 0);
    return x;
  }

  private forward(p: Pass): void {
    const model = this.chunkOf.get(p.stage)!;
    const B = this.step.microBatchSize, S = this.step.seqLen, m = this.step.schedule.micro;
    const last = p.stage === this.lastStage;
    const input = p.stage === 0 ? null : take(this.inputs, actKey(p.mb, p.stage - 1), `the input of stage ${p.stage} for micro-batch ${p.mb}`);
    const tokens = p.stage === 0 || last ? this.step.batch(p.mb) : null;
    const out = tidy(() => {
      const x = input ?? model.embedTokens(fromHost(this.backend, tokens!.inputs, [B, S], 'i32'));
      const { h, loadBalance } = model.runLayers(x, B, S, this.step.loadBalance);
      this.backend.binary('add', this.lbSum, this.lbSum, loadBalance);
      if (!last) return { root: h, loadBalance };
      let count = tokens!.labelCount ?? 0;
      if (tokens!.labelCount === undefined) for (const l of tokens!.labels) if (l >= 0) count++;
      const ce = model.headLoss(h, fromHost(this.backend, tokens!.labels, [B, S], 'i32'), count);
      this.backend.binary('add', this.ceSum, this.ceSum, ce);
      return { root: scale(add(ce, loadBalance), 1 / m), loadBalance };
    });
    const f: Forward = { input, root: keep(out.root), loadBalance: keep(out.loadBalance) };
    this.forwards.set(`${p.mb}:${p.stage}`, f);
    // The turn of the V: the next stage is on this rank; its input is a detached copy.
    if (!last && this.chunkOf.has(p.stage + 1)) {
      const copy = keep(emptyTensor(this.backend, f.root.shape, f.root.dtype));
      this.backend.copy(copy, f.root);
      this.inputs.set(actKey(p.mb, p.stage), this.leaf(copy));
    }
  }

  private backward(p: Pass): void {
    const f = take(this.forwards, `${p.mb}:${p.stage}`, `the forward of micro-batch ${p.mb}, stage ${p.stage}`);
    const seed = p.stage === this.lastStage ? null : take(this.outputGrads, gradKey(p.mb, p.stage + 1), `the gradient of stage ${p.stage}'s output for micro-batch ${p.mb}`);
    const roots: { root: Tensor; seed?: Tensor }[] = [seed ? { root: f.root, seed } : { root: f.root }];
    if (seed && f.loadBalance.gradLink) roots.push({ root: f.loadBalance, seed: this.lbSeed });
    tidy(() => backwardFrom(roots));
    this.step.afterBackward?.(p.stage);
    seed?.dispose();
    f.root.dispose();
    f.loadBalance.dispose();
    if (!f.input) return;
    const g = f.input.grad!;
    f.input.grad = null;
    f.input.dispose();
    // The gradient of this stage's input goes to the stage before: sent, or handed over on this rank.
    if (this.chunkOf.has(p.stage - 1)) this.outputGrads.set(gradKey(p.mb, p.stage), g);
    else this.inputGrads.set(gradKey(p.mb, p.stage), g);
  }
}

/**
 * Runs this rank's share of one optimizer step: every pass and transfer of
 * step.schedule.actions[comm.rank], in order. The chunks' parameter gradients accumulate the
 * step's gradients; the caller zeroes them and calls each chunk's model.beginStep() before, and
 * reduces, clips and applies them after.
 */
export function runPipelineStep(step: PipelineStep): PipelineStepResult {
  return new StepRunner(step).run();
}
