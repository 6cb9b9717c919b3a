// DeepSeek-V2: MLA attention (q_proj or q-LoRA, compressed kv with a shared rotary key) and
// DeepSeekMoE (fp32 softmax router, top-k routed SwiGLU experts plus shared experts), with the
// load-balance loss in three forms. The forward pass reads the typed parameter structure of
// deepseek_v2_weights.ts; Hugging Face names exist only at the checkpoint boundary
// (deepseek_v2_names.ts). A model may hold a part of the whole (ModelPart): a pipeline stage
// runs embedTokens / runLayers / headLoss for what it owns, and an MoE layer computes only the
// routed experts it owns (routedExperts is where their rows enter and leave); under expert
// parallelism an ExpertDispatchHook (expert_dispatch_hook.ts) brings it the other ranks' tokens
// for those experts and returns the whole routed output. A parallel layout also enters through
// the hooks of unit_hooks.ts: around each unit's forward (embedding, decoder layer, head) and at
// the global-batch expert counts.
//
// Shape legend: B batch, S sequence, N = B·S tokens, D hidden, H heads, Dn/Dr/Dv nope/rope/value
// head widths, C kv_lora_rank, E routed experts, k experts per token, V vocabulary, M routed rows.
import type { Backend } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';
import { tidy, keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { fromHost, toHostI32 } from '../ops/create.js';
import { reshape, splitLastDim, permute, contiguous } from '../ops/shape.js';
import { add, cast, mul, div, scale } from '../ops/elementwise.js';
import { sumAll, sumLastDim } from '../ops/reduce.js';
import { linear } from '../ops/linear.js';
import { rmsNorm } from '../ops/rms_norm.js';
import { rope } from '../ops/rope.js';
import { swiglu } from '../ops/swiglu.js';
import { groupedSwiGLU } from '../ops/grouped_swiglu.js';
import { embedding } from '../ops/embedding.js';
import { linearCrossEntropyMean } from '../ops/linear_cross_entropy.js';
import { withRecomputeMarks, type RecomputeKind } from '../autograd/recompute.js';
import { rerunInBackward } from '../autograd/rerun.js';
import { softmax } from '../ops/softmax.js';
import { topk, bincount, expertOrder, expertOrderInverse } from '../ops/routing.js';
import { gatherRows } from '../ops/rows.js';
import { combineRows, dispatchRows } from '../ops/expert_rows.js';
import { groupedLinear } from '../ops/grouped_linear.js';
import { mlaAttention } from '../ops/mla_attention.js';
import { Param, type ParamMaker } from '../nn/param.js';
import { ParamArena, wholeParamTensors } from '../nn/param_arena.js';
import { normalValuesMany } from '../nn/init.js';
import { ropeTablesAt, yarnMscale } from '../nn/rope_tables.js';
import type { DeepseekV2Config } from './deepseek_v2_config.js';
import type { AttentionHook } from './attention_hook.js';
import type { ModelSection, SectionHooks } from './section_hooks.js';
import type { ExpertDispatchHook } from './expert_dispatch_hook.js';
import type { ExpertCountsHook, ModelUnit, UnitHooks } from './unit_hooks.js';
import {
  buildWeights, wholeModel, type Attention, type DecoderLayer, type DeepseekV2Weights, type Mlp, type ModelPart, type MoeBlock, type ParamSpec,
} from './deepseek_v2_weights.js';

/** Which statistics the load-balance loss balances (DESIGN.md). */
export type LoadBalanceForm = 'micro-batch' | 'global-batch' | 'sequence';
/** What backward computes again instead of keeping (DeepseekV2.recompute, train option recompute). */
export type RecomputeMode = 'cheap' | 'copies' | 'none' | 'layers';
/**
 * The marks (autograd/recompute.ts) that take effect in a layer's forward under each mode: none
 * under 'layers', whose second forward is followed by its backward at once.
 */
export function recomputedKinds(mode: RecomputeMode): RecomputeKind[] {
  return mode === 'cheap' ? ['copy', 'compute'] : mode === 'copies' ? ['copy'] : [];
}

export interface LoadBalance {
  form: LoadBalanceForm;
  /** Coefficient α; 0 disables the loss. */
  alpha: number;
}

export interface ForwardResult {
  /** Mean cross-entropy over labelled tokens, [1] f32. */
  crossEntropy: Tensor;
  /** Σ over MoE layers of the load-balance loss, [1] f32 (zeros when α = 0 or no MoE layer). */
  loadBalance: Tensor;
}

/** The router's result for one MoE layer (DeepseekV2.route). */
/** The router's output for N tokens. */
interface Gate {
  /** Router probabilities [N, E] f32 (load-balance loss). */
  probs: Tensor;
  /** Top-k experts [N, k] i32, the same as slots [N·k] (a view), and their weights [N, k] f32. */
  indices: Tensor;
  slots: Tensor;
  weights: Tensor;
}

/** The owned experts' share of the routed slots, grouped by expert. */
interface Routing {
  /** Row-block boundaries of the owned experts, i32 [owned + 1] on the device (relative to the first entry). */
  offsets: Tensor;
  /** The token [M] i32 and router weight [M, 1] f32 of each owned routed row, grouped by expert. */
  tokenOfSorted: Tensor;
  sortedWeights: Tensor;
  /** The owned row of each routed slot [N·k] i32 (slot n·k + j: token n's j-th pick), −1 for slots of other experts. */
  rowOfSlot: Tensor;
}

/** Values made per batch of initialisation (256 MB of f32 in flight, with their copies). */
const INIT_BATCH = 64 << 20;

export class DeepseekV2 implements DeepseekV2Weights<Param> {
  readonly embed: Param | null;
  readonly layers: DecoderLayer<Param>[];
  readonly norm: Param | null;
  readonly lmHead: Param | null;
  /** The owned parameters in the model's order; specs[i] says what params[i] is. */
  readonly params: Param[] = [];
  readonly specs: ParamSpec[] = [];
  private readonly ropeCache = new Map<number, { cos: Tensor; sin: Tensor }>();
  readonly softmaxScale: number;
  /** Expert counts accumulated over the micro-batches of one step (global-batch form), per MoE layer. */
  private globalCounts = new Map<number, { counts: Tensor; slots: number }>();
  /** k as an i32 [1] tensor, uploaded once (token index of each routed slot). */
  private topK: Tensor | null = null;
  /** Hooks around the parts of the forward pass (a profiler's timing); null runs them directly. */
  sections: SectionHooks | null = null;
  /** The head keeps the micro-batch's logits for backward instead of recomputing them (train option keep_logits; ops/linear_cross_entropy.ts). */
  keepLogits = false;
  /**
   * What backward gets by computing again rather than keeping (train option recompute): 'cheap'
   * the SwiGLU outputs, the MoE's gathered rows and the router's f32 input (autograd/recompute.ts);
   * 'copies' only the last two (copies of tensors kept anyway: no arithmetic), keeping the SwiGLU
   * outputs; 'none' keeps them all; 'layers' keeps only each decoder layer's input and output and runs the
   * whole layer again in backward (autograd/rerun.ts).
   */
  recompute: RecomputeMode = 'cheap';
  /**
   * Expert parallelism: set (by the trainer, when ep > 1) to send routed tokens to the ranks
   * that own their experts; null: an MoE layer computes only the owned experts' share.
   */
  expertDispatch: ExpertDispatchHook | null = null;
  private attnHook: AttentionHook | null = null;
  /** Set by the trainer under a sharded layout: wraps each unit's forward (unit_hooks.ts). */
  unitHooks: UnitHooks | null = null;
  /** Set by the trainer when several ranks read different data: sums the global-batch expert counts. */
  expertCounts: ExpertCountsHook | null = null;

  /**
   * The whole model, or the part of it that `part` names (its parameters only are allocated);
   * `makeParam` makes each parameter (default: a whole Param of its own; a sharded layout passes
   * its own maker).
   */
  constructor(
    readonly config: DeepseekV2Config, readonly backend: Backend, readonly computeDtype: DType, readonly part: ModelPart = wholeModel(config),
    makeParam?: ParamMaker,
  ) {
    // The router stays f32: its logits and softmax are computed in f32 (DESIGN.md numerics).
    const dtypeOf = (spec: ParamSpec): DType => (spec.dtype === 'f32' ? 'f32' : computeDtype);
    // Whole parameters come from one arena (nn/param_arena.ts), sized by a pass over the specs.
    const specs: ParamSpec[] = [];
    buildWeights(config, part, (spec) => { specs.push(spec); return spec; });
    const arena = makeParam ? null : new ParamArena(backend, wholeParamTensors(specs.map((s) => ({ shape: s.shape, dtype: dtypeOf(s) }))));
    const make: ParamMaker = makeParam ?? ((spec, dtype) => new Param(spec.shape, backend, dtype, { arena: arena! }));
    const w = buildWeights(config, part, (spec) => {
      const p = make(spec, dtypeOf(spec));
      this.params.push(p);
      this.specs.push(spec);
      return p;
    });
    arena?.close();
    this.embed = w.embed;
    this.layers = w.layers;
    this.norm = w.norm;
    this.lmHead = w.lmHead;
    const c = config;
    let sc = 1 / Math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim);
    if (c.rope_scaling && c.rope_scaling.mscale_all_dim) {
      const m = yarnMscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
      sc *= m * m;
    }
    this.softmaxScale = sc;
  }

  /**
   * Initialisation of DESIGN.md: N(0, σ) matrices, σ/√(2·layers) for o_proj and down_proj, norms 1.
   * Each parameter's values are seeded by its index in the whole model, so a part gets exactly
   * the values of the same parameters of the whole model.
   */
  initialize(seed: number): void {
    const sigma = this.config.initializer_range;
    const residual = sigma / Math.sqrt(2 * this.config.num_hidden_layers);
    // Consecutive normal parameters are made together, about INIT_BATCH values at a time, so
    // that the many small ones (expert matrices) spread over the init workers too; loads keep
    // the parameters' order.
    let batch: { p: Param; length: number; std: number; param: number }[] = [];
    let values = 0;
    const flush = () => {
      const made = normalValuesMany(batch, seed);
      batch.forEach((b, k) => b.p.load(made[k]!));
      batch = [];
      values = 0;
    };
    this.params.forEach((p, i) => {
      const spec = this.specs[i]!;
      if (spec.init === 'ones') { flush(); p.load(new Float32Array(p.size).fill(1)); return; }
      batch.push({ p, length: p.size, std: spec.init === 'residual' ? residual : sigma, param: spec.index });
      values += p.size;
      if (values >= INIT_BATCH) flush();
    });
    flush();
  }

  /**
   * Context parallelism (parallel/context_parallel.ts): the local tokens are a share of longer
   * sequences, RoPE takes their global positions and attention runs through the hook; null
   * attends over the local tokens as the whole sequence.
   */
  get attentionHook(): AttentionHook | null { return this.attnHook; }
  set attentionHook(h: AttentionHook | null) {
    for (const t of this.ropeCache.values()) { t.cos.dispose(); t.sin.dispose(); }
    this.ropeCache.clear();
    this.attnHook = h;
  }

  /** cos/sin tables [S, Dr/2] of the S local tokens' positions (0..S−1 without a hook). */
  private rope(S: number): { cos: Tensor; sin: Tensor } {
    let t = this.ropeCache.get(S);
    if (!t) {
      const c = this.config;
      const positions = this.attnHook ? this.attnHook.positions(S) : Array.from({ length: S }, (_, s) => s);
      const { cos, sin } = ropeTablesAt(positions, c.qk_rope_head_dim, c.rope_theta, c.rope_scaling);
      const half = c.qk_rope_head_dim / 2;
      t = { cos: keep(fromHost(this.backend, cos, [S, half], 'f32')), sin: keep(fromHost(this.backend, sin, [S, half], 'f32')) };
      this.ropeCache.set(S, t);
    }
    return t;
  }

  /** Starts a training step: clears the global-batch expert counts. */
  beginStep(): void {
    for (const g of this.globalCounts.values()) g.counts.dispose();
    this.globalCounts.clear();
  }

  /**
   * Forward pass of one micro-batch through the whole model: ids and labels i32 [B, S] (labels
   * < 0 ignored); labelCount = number of labels ≥ 0 (host-known, so no device read is needed).
   */
  forward(ids: Tensor, labels: Tensor, labelCount: number, lb: LoadBalance): ForwardResult {
    const [B, S] = ids.shape as [number, number];
    const { h, loadBalance } = this.runLayers(this.embedTokens(ids), B, S, lb);
    return { crossEntropy: this.headLoss(h, labels, labelCount), loadBalance };
  }

  /** Next-token logits [B·S, V] for ids i32 [B, S] (evaluation and checkpoint parity checks). */
  logits(ids: Tensor): Tensor {
    const [B, S] = ids.shape as [number, number];
    return this.headLogits(this.runLayers(this.embedTokens(ids), B, S, { form: 'micro-batch', alpha: 0 }).h);
  }

  /** Runs one unit's forward through the unit hooks when set (unit_hooks.ts). */
  private runUnit(unit: ModelUnit, inputs: readonly Tensor[], forward: (inputs: readonly Tensor[]) => Tensor[]): Tensor[] {
    return this.unitHooks ? this.unitHooks.runUnit(unit, inputs, forward) : forward(inputs);
  }

  /** Token embeddings [B·S, D] of ids i32 [B, S] (a part that owns the embedding). */
  embedTokens(ids: Tensor): Tensor {
    const embed = this.embed;
    if (!embed) throw new Error('internal: embedTokens on a model part that does not own the embedding');
    const [B, S] = ids.shape as [number, number];
    return this.runUnit({ kind: 'embed' }, [], () => [reshape(embedding(ids, embed.value), [B * S, this.config.hidden_size])])[0]!;
  }

  /**
   * The owned decoder layers on hidden states h [B·S, D]: their output [B·S, D] and the sum of
   * their load-balance losses, [1] f32 (zeros when α = 0 or no owned layer is MoE).
   */
  runLayers(h: Tensor, B: number, S: number, lb: LoadBalance): { h: Tensor; loadBalance: Tensor } {
    if (this.recompute === 'layers' && lb.form === 'global-batch' && lb.alpha > 0) {
      // Its counts accumulate over the step's micro-batches as each forward runs; a second forward would add them twice.
      throw new Error('recompute=layers cannot be combined with load_balance.form=global-batch: use load_balance.form sequence or micro-batch, or recompute cheap');
    }
    const parts: Tensor[] = [];
    for (const layer of this.layers) {
      // Each layer in its own scope: only its output (and its share of the load-balance loss)
      // survives; the tensors its backward rules need are held by the autograd nodes.
      const prev = h;
      const run = (inputs: readonly Tensor[]) => {
        const r = this.layer(layer, inputs[0]!, B, S, lb);
        return r.lb ? [r.h, r.lb] : [r.h];
      };
      const [out, lbPart] = tidy(() => this.runUnit({ kind: 'layer', index: layer.index }, [prev], (inputs) => {
        const kinds = recomputedKinds(this.recompute);
        if (this.recompute !== 'layers') return withRecomputeMarks(kinds, () => run(inputs));
        return rerunInBackward(inputs, (again) => withRecomputeMarks(kinds, () => run(again)));
      }));
      h = out!;
      if (lbPart) parts.push(lbPart);
    }
    if (parts.length === 0) return { h, loadBalance: fromHost(this.backend, [0], [1], 'f32') };
    let total = parts[0]!;
    for (let i = 1; i < parts.length; i++) total = add(total, parts[i]!);
    return { h, loadBalance: total };
  }

  /** Final norm and lm_head on h [B·S, D]: logits [B·S, V] (a part that owns the head). */
  headLogits(h: Tensor): Tensor {
    const norm = this.norm, lmHead = this.lmHead;
    if (!norm || !lmHead) throw new Error('internal: headLogits on a model part that does not own the head');
    return this.runUnit({ kind: 'head' }, [h], ([x]) => [linear(rmsNorm(x!, norm.value, this.config.rms_norm_eps), lmHead.value)])[0]!;
  }

  /**
   * Mean cross-entropy [1] f32 of the head's logits against labels i32 [B, S] (labels < 0
   * ignored), computed in row chunks so that the logits of the whole micro-batch never exist
   * (ops/linear_cross_entropy.ts).
   */
  headLoss(h: Tensor, labels: Tensor, labelCount: number): Tensor {
    const norm = this.norm, lmHead = this.lmHead;
    if (!norm || !lmHead) throw new Error('internal: headLoss on a model part that does not own the head');
    return this.section('head', h, (x) => this.runUnit({ kind: 'head' }, [x], ([y]) => [
      linearCrossEntropyMean(rmsNorm(y!, norm.value, this.config.rms_norm_eps), lmHead.value, reshape(labels, [y!.shape[0]!]), labelCount, undefined,
        this.keepLogits),
    ])[0]!);
  }

  private section(kind: ModelSection, x: Tensor, fn: (x: Tensor) => Tensor): Tensor {
    return this.sections ? this.sections.section(kind, x, fn) : fn(x);
  }

  private layer(layer: DecoderLayer<Param>, x: Tensor, B: number, S: number, lb: LoadBalance): { h: Tensor; lb: Tensor | null } {
    const eps = this.config.rms_norm_eps;
    // Attention and the MLP/MoE each run in a scope of their own: their temporaries that backward
    // does not need (projections before their split, expert outputs before their concatenation,
    // f32 accumulators) are freed as each ends, not when the whole layer does, which lowers the
    // forward's peak (the last layer's forward, on top of every earlier layer's saved tensors).
    const a = tidy(() => this.section('attention', rmsNorm(x, layer.inputNorm.value, eps), (xn) => this.attention(layer.attn, xn, B, S)));
    const h = add(x, a);
    const normed = rmsNorm(h, layer.postNorm.value, eps);
    const mlp = layer.mlp;
    if (mlp) return { h: add(h, tidy(() => this.section('mlp', normed, (xn) => this.mlp(mlp, xn)))), lb: null };
    const moe = tidy(() => this.moe(layer, normed, B, S, lb));
    return { h: add(h, moe.out), lb: moe.lb };
  }

  private attention(w: Attention<Param>, x: Tensor, B: number, S: number): Tensor {
    const c = this.config, H = c.num_attention_heads;
    const Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim;
    const q = w.qProj
      ? linear(x, w.qProj.value)
      : linear(rmsNorm(linear(x, w.qLora!.aProj.value), w.qLora!.aNorm.value, c.rms_norm_eps), w.qLora!.bProj.value);
    // q_nope, k_nope and v stay views of their projections (mlaAttention reads them in place); q_pe
    // is copied out for RoPE.
    const [qNope, qPeRaw] = splitLastDim(reshape(q, [B, S, H, Dn + Dr]), [Dn, Dr], [true, false]) as [Tensor, Tensor];
    const [ckv, kPeRaw] = splitLastDim(linear(x, w.kvAProj.value), [c.kv_lora_rank, Dr]) as [Tensor, Tensor];
    const kv = linear(rmsNorm(ckv, w.kvANorm.value, c.rms_norm_eps), w.kvBProj.value);
    const [kNope, v] = splitLastDim(reshape(kv, [B, S, H, Dn + Dv]), [Dn, Dv], [true, true]) as [Tensor, Tensor];
    const { cos, sin } = this.rope(S);
    const qPe = rope(qPeRaw, cos, sin);
    const kPe = rope(reshape(kPeRaw, [B, S, 1, Dr]), cos, sin);
    const opts = { causal: true, scale: this.softmaxScale };
    const o = this.attnHook ? this.attnHook.attention(qNope, qPe, kNope, kPe, v, opts) : mlaAttention(qNope, qPe, kNope, kPe, v, opts).o;
    return linear(reshape(o, [B * S, H * Dv]), w.oProj.value);
  }

  private mlp(w: Mlp<Param>, x: Tensor): Tensor {
    const g = linear(x, w.gate.value), u = linear(x, w.up.value);
    return linear(swiglu(g, u), w.down.value);
  }

  /**
   * The owned routed experts on their rows: xs [M, D] holds counts[i] rows for moe.experts[i],
   * in that order; returns their outputs [M, D] in the same order. Routed rows enter and leave
   * the local experts here and nowhere else (an expert-parallel dispatcher wraps this, with
   * counts it knows on the host; they go to the device as offsets, a copy with no wait).
   */
  routedExperts(moe: MoeBlock<Param>, xs: Tensor, counts: readonly number[]): Tensor {
    const bounds = [0];
    for (const c of counts) bounds.push(bounds[bounds.length - 1]! + c);
    return this.expertsOnRows(moe, xs, fromHost(this.backend, bounds, [bounds.length], 'i32'));
  }

  /**
   * routedExperts with the row blocks given by device offsets i32 [owned + 1] (expert i's rows are
   * [offsets[i] − offsets[0], offsets[i+1] − offsets[0])): every projection is one grouped
   * product over all owned experts, so no count is read on the host; gate, up and their SwiGLU
   * are one (ops/grouped_swiglu.ts).
   */
  private expertsOnRows(moe: MoeBlock<Param>, xs: Tensor, offsets: Tensor): Tensor {
    const ex = moe.experts;
    const h = groupedSwiGLU(xs, ex.map((m) => m.gate.value), ex.map((m) => m.up.value), offsets);
    return groupedLinear(h, ex.map((m) => m.down.value), offsets);
  }

  /**
   * The MoE block on x [N, D]: router over all E experts, then the routed output (through the
   * expert dispatcher when one is set; otherwise the owned experts' share, all of it for the
   * whole model) plus the shared experts.
   */
  private moe(layer: DecoderLayer<Param>, x: Tensor, B: number, S: number, lb: LoadBalance): { out: Tensor; lb: Tensor | null } {
    const w = layer.moe!, N = B * S;
    let g!: Gate;
    let out: Tensor;
    const dispatch = this.expertDispatch;
    if (dispatch) {
      const weights = this.section('router', x, (xr) => { g = this.gate(w, xr, N); return g.weights; });
      const local = { first: w.firstExpert, count: w.experts.length, run: (xs: Tensor, counts: readonly number[]) => this.routedExperts(w, xs, counts) };
      out = this.section('experts', x, (xe) => dispatch.routedOutput(xe, g.indices, weights, local));
    } else {
      let r!: Routing;
      const xs = this.section('router', x, (xr) => {
        g = this.gate(w, xr, N);
        r = this.ownedRouting(w, g, N);
        return dispatchRows(xr, r.tokenOfSorted, r.rowOfSlot);
      });
      // In a scope: the gate/up products and their SwiGLU go as soon as the down product is made.
      const ys = this.section('experts', xs, (rows) => tidy(() => this.expertsOnRows(w, rows, r.offsets)));
      out = this.section('router', ys, (rows) => combineRows(rows, r.tokenOfSorted, r.rowOfSlot, r.sortedWeights, N));
    }
    const shared = w.shared;
    if (shared) out = add(out, this.section('experts', x, (xe) => this.mlp(shared, xe)));
    const lbLoss = lb.alpha > 0 ? this.section('router', g.probs, (p) => this.loadBalanceLoss(layer.index, p, g.slots, B, S, lb)) : null;
    return { out, lb: lbLoss };
  }

  /** The router on x [N, D]: f32 softmax over all E experts, top-k, and the routing weights. */
  private gate(w: MoeBlock<Param>, x: Tensor, N: number): Gate {
    const c = this.config, k = c.num_experts_per_tok;
    const logits = linear(cast(x, 'f32'), w.router.value);
    const probs = softmax(logits);
    const { values, indices } = topk(probs, k);
    // DeepSeek-V2's rule (HF modeling_deepseek_v2): renormalise when norm_topk_prob and k > 1,
    // otherwise scale by routed_scaling_factor; never both.
    let weights = values;
    if (k > 1 && c.norm_topk_prob) weights = div(weights, add(reshape(sumLastDim(weights), [N, 1]), fromHost(this.backend, [1e-20], [1], 'f32')));
    else if (c.routed_scaling_factor !== 1) weights = scale(weights, c.routed_scaling_factor);
    return { probs, indices, weights, slots: indices.view([N * k], [1], indices.offset) };
  }

  /**
   * The owned experts' routed slots grouped by expert: their token, router weight and the
   * experts' row blocks as device offsets, and each slot's row (the inverse of the order, which
   * lets a token sum its own rows: ops/expert_rows.ts). When this part owns every expert the row count is
   * N·k and nothing is read on the host; a part owning some experts reads the boundaries once
   * per MoE layer (its row count sizes the tensors).
   */
  private ownedRouting(w: MoeBlock<Param>, g: Gate, N: number): Routing {
    const E = this.config.n_routed_experts, k = this.config.num_experts_per_tok;
    const { order, offsets } = expertOrder(g.slots, E);
    // The owned experts' slots are one block of the expert-sorted order: [bounds[e0], bounds[e1]).
    const e0 = w.firstExpert, e1 = e0 + w.experts.length;
    let M = N * k, first = 0;
    if (e0 !== 0 || e1 !== E) {
      const bounds = toHostI32(offsets);
      M = bounds[e1]! - bounds[e0]!;
      first = bounds[e0]!;
    }
    const owned = M === N * k ? order : order.view([M], [1], order.offset + first);
    const ownedOffsets = e1 - e0 === E ? offsets : offsets.view([e1 - e0 + 1], [1], offsets.offset + e0);
    // Slot m belongs to token floor(m/k): integer division by a broadcast [1] tensor holding k.
    this.topK ??= keep(fromHost(this.backend, [k], [1], 'i32'));
    const kView = this.topK.view([M], [0], this.topK.offset);
    const tokenOfSorted = emptyTensor(this.backend, [M], 'i32');
    this.backend.binary('div', tokenOfSorted, owned, kView);
    kView.dispose();
    const sortedWeights = gatherRows(reshape(g.weights, [N * k, 1]), owned, null);
    return { offsets: ownedOffsets, tokenOfSorted, sortedWeights, rowOfSlot: expertOrderInverse(order, first, M) };
  }

  /** α·E·Σ_i f_i·P_i with f the fraction of routed slots per expert and P the mean router probability. */
  private loadBalanceLoss(l: number, probs: Tensor, slots: Tensor, B: number, S: number, lb: LoadBalance): Tensor {
    const c = this.config, E = c.n_routed_experts, k = c.num_experts_per_tok, N = B * S;
    if (lb.form === 'sequence') {
      // With context parallelism a sequence's counts are summed over the cp ranks, and this
      // rank's loss is its tokens' share of Σ f·P (the shares add up over cp to the loss).
      const counts = bincount(slots.view([B, S * k], [S * k, 1], slots.offset), E);
      this.attnHook?.sumSequenceCounts(counts);
      const seq = S * (this.attnHook?.cp ?? 1);
      const f = scale(cast(counts, 'f32'), 1 / (seq * k));
      const P = scale(sumLastDim(contiguous(permute(reshape(probs, [B, S, E]), [0, 2, 1]))), 1 / seq); // [B, E]
      return scale(sumAll(mul(f, P)), lb.alpha * E / B);
    }
    const P = scale(sumLastDim(contiguous(permute(probs, [1, 0]))), 1 / N); // [E]
    const counts = cast(bincount(slots, E), 'f32');
    if (lb.form === 'micro-batch') return scale(sumAll(mul(scale(counts, 1 / (N * k)), P)), lb.alpha * E);
    // global-batch: counts accumulated over this step's micro-batches so far; with data or
    // expert parallelism each micro-batch's counts are first summed over the ranks reading
    // different data (the expertCounts hook), and so are the slots they saw.
    const ranks = this.expertCounts ? this.expertCounts.sumExpertCounts(counts) : 1;
    const prev = this.globalCounts.get(l);
    const total = keep(prev ? add(prev.counts, counts) : scale(counts, 1));
    const seen = (prev?.slots ?? 0) + N * k * ranks;
    prev?.counts.dispose();
    this.globalCounts.set(l, { counts: total, slots: seen });
    return scale(sumAll(mul(scale(total, 1 / seen), P)), lb.alpha * E);
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
    for (const t of this.ropeCache.values()) { t.cos.dispose(); t.sin.dispose(); }
    this.topK?.dispose();
    this.beginStep();
  }
}

