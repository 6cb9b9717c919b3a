// The CPU backend: plain TypeScript over ArrayBuffers. It is the oracle every GPU kernel is
// tested against and the default where there is no GPU, so it favours the direct definition
// over speed (except in matmul, which dominates the default run).
import os from 'node:os';
import { bytesPerElement, f32ArrayToBf16, type HostArray } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { AdamHyper, AttentionOptions, GradsAfter, LeanAdamHyper, Backend, BinaryOp, DeviceBuffer, MatmulOptions, MemoryStats, MlaBlockEnds, UnaryOp } from '../backend.js';
import type { AdamSlot, LeanAdamSlot, TensorList } from '../tensor_list.js';
import { adamLeanSlot } from './adam_lean.js';
import { HostBuffer, arrayOf, denseView, forEachIndex, readF32, storageArray, writeF32 } from './host.js';
import { cpuMatmul } from './matmul.js';
import { cpuGroupedLinear, cpuGroupedLinearBackwardData, cpuGroupedLinearWeightGrad } from './grouped_matmul.js';
import { mlaBackwardBlockByWhole } from '../mla_backward_block.js';
import { groupedDataPairByParts } from '../grouped_data_pair.js';
import { groupedWeightPairByParts } from '../grouped_weight_pair.js';
import { cpuAttentionMerge, cpuMlaAttention, cpuMlaAttentionBackward } from './attention.js';
import * as m from './model_ops.js';

function unaryFn(op: UnaryOp, s: number): (x: number) => number {
  switch (op) {
    case 'neg': return (x) => -x;
    case 'exp': return Math.exp;
    case 'log': return Math.log;
    case 'sqrt': return Math.sqrt;
    case 'rsqrt': return (x) => 1 / Math.sqrt(x);
    case 'square': return (x) => x * x;
    case 'silu': return (x) => x / (1 + Math.exp(-x));
    case 'scale': return (x) => x * s;
    case 'addScalar': return (x) => x + s;
    default: return op satisfies never;
  }
}

function binaryFn(op: BinaryOp): (a: number, b: number) => number {
  switch (op) {
    case 'add': return (a, b) => a + b;
    case 'sub': return (a, b) => a - b;
    case 'mul': return (a, b) => a * b;
    case 'div': return (a, b) => a / b;
    default: return op satisfies never;
  }
}

export class CpuBackend implements Backend {
  readonly kind = 'cpu' as const;
  readonly description = `cpu (${os.availableParallelism()} cores, TypeScript reference backend)`;
  private live = 0;
  private peak = 0;

  alloc(bytes: number): DeviceBuffer {
    // 8-byte granularity keeps every typed-array view aligned.
    const buf = new HostBuffer(new ArrayBuffer(Math.ceil(bytes / 8) * 8), bytes);
    this.live += bytes;
    if (this.live > this.peak) this.peak = this.live;
    return buf;
  }
  free(buffer: DeviceBuffer): void { this.live -= buffer.bytes; }
  memoryStats(): MemoryStats { return { liveBytes: this.live, peakBytes: this.peak, reservedBytes: this.live }; }
  resetPeak(): void { this.peak = this.live; }
  synchronize(): void {}

  write(dst: Tensor, src: HostArray): void {
    const view = denseView(dst);
    if (view.constructor !== src.constructor || view.length !== src.length) {
      throw new Error(`internal: write of ${src.constructor.name}[${src.length}] into ${dst}`);
    }
    (view as Float32Array).set(src as Float32Array);
  }

  read(src: Tensor): HostArray {
    if (src.isContiguous()) return denseView(src).slice();
    const all = storageArray(src);
    const out = arrayOf(src.dtype, new ArrayBuffer(src.size * bytesPerElement(src.dtype)), 0, src.size);
    forEachIndex(src, (i, at) => { out[i] = all[at]!; });
    return out;
  }

  copy(dst: Tensor, src: Tensor): void {
    if (dst.size !== src.size) throw new Error(`internal: copy ${src} into ${dst}`);
    const d = storageArray(dst);
    if (dst.dtype === src.dtype) {
      const s = storageArray(src);
      const vals = new Array<number>(src.size);
      forEachIndex(src, (i, at) => { vals[i] = s[at]!; });
      forEachIndex(dst, (i, at) => { d[at] = vals[i]!; });
      return;
    }
    const vals = readF32(src);
    if (dst.isContiguous()) { writeF32(dst, vals); return; }
    const tmp = arrayOf(dst.dtype, new ArrayBuffer(dst.size * bytesPerElement(dst.dtype)), 0, dst.size);
    if (tmp instanceof Int32Array) for (let i = 0; i < vals.length; i++) tmp[i] = Math.round(vals[i]!);
    else if (tmp instanceof Float32Array) tmp.set(vals);
    else f32ArrayToBf16(vals, tmp);
    forEachIndex(dst, (i, at) => { d[at] = tmp[i]!; });
  }

  fill(dst: Tensor, value: number): void {
    const n = dst.size;
    const vals = new Float32Array(n).fill(value);
    if (dst.dtype === 'i32') { (denseView(dst) as Int32Array).fill(value); return; }
    writeF32(dst, vals);
  }

  unary(op: UnaryOp, out: Tensor, x: Tensor, scalar = 0): void {
    const f = unaryFn(op, scalar);
    const X = readF32(x);
    for (let i = 0; i < X.length; i++) X[i] = f(X[i]!);
    writeF32(out, X);
  }

  binary(op: BinaryOp, out: Tensor, a: Tensor, b: Tensor): void {
    const f = binaryFn(op);
    if (out.dtype === 'i32') {
      const A = this.read(a) as Int32Array, B = this.read(b) as Int32Array, O = denseView(out) as Int32Array;
      for (let i = 0; i < O.length; i++) O[i] = f(A[i]!, B[i]!) | 0;
      return;
    }
    const A = readF32(a), B = readF32(b);
    for (let i = 0; i < A.length; i++) A[i] = f(A[i]!, B[i]!);
    writeF32(out, A);
  }

  sumLastDim(out: Tensor, x: Tensor): void {
    const C = x.shape[x.rank - 1] ?? 1, R = x.size / C;
    const X = readF32(x), O = new Float32Array(R);
    for (let r = 0; r < R; r++) { let s = 0; for (let c = 0; c < C; c++) s += X[r * C + c]!; O[r] = s; }
    writeF32(out, O);
  }

  sumSquaresInto(out: Tensor, x: Tensor): void {
    const X = readF32(x);
    let s = 0;
    for (let i = 0; i < X.length; i++) s += X[i]! * X[i]!;
    (denseView(out) as Float32Array)[0] += s;
  }

  sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void {
    (denseView(out) as Float32Array)[0] = 0;
    for (const x of list.entries) this.sumSquaresInto(out, x);
  }

  matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void { cpuMatmul(out, a, b, opts); }
  groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void { cpuGroupedLinear(out, x, weights, offsets); }
  groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    cpuGroupedLinearBackwardData(dx, dy, weights, offsets);
  }
  /** The two products and their sum, autograd's bits for the pair (grouped_data_pair.ts: why the oracle keeps them). */
  groupedLinearBackwardDataPair(dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): void {
    groupedDataPairByParts(this, dx, dy1, dy2, w1, w2, offsets);
  }
  /**
   * Declines the squares (returns false): on the CPU, summing them costs what the norm's own pass
   * costs, and the step's norm stays the plain sumSquaresMulti.
   */
  groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1, _squares?: Tensor): boolean {
    cpuGroupedLinearWeightGrad(dweights, dy, x, offsets, beta);
    return false;
  }
  /** The two products, the second's first (grouped_weight_pair.ts). */
  groupedLinearWeightGradPair(dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1,
                              squares?: Tensor): boolean {
    return groupedWeightPairByParts(this, dw1, dw2, dy1, dy2, x, offsets, beta, squares);
  }

  rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void { m.rmsNorm(y, rstd, x, w, eps); }
  rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void { m.rmsNormBackward(dx, dw, dy, x, w, rstd); }
  rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void { m.rope(out, x, cos, sin); }
  ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void { m.ropeBackward(dx, dout, cos, sin); }
  groupedSwiGLU(h: Tensor, g: Tensor, u: Tensor, x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): void {
    this.groupedLinear(g, x, gates, offsets);
    this.groupedLinear(u, x, ups, offsets);
    this.swiglu(h, g, u);
  }
  swiglu(out: Tensor, gate: Tensor, up: Tensor): void { m.swiglu(out, gate, up); }
  swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void { m.swigluBackward(dgate, dup, dout, gate, up); }
  embedding(out: Tensor, ids: Tensor, weight: Tensor): void { m.embedding(out, ids, weight); }
  embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, _squares?: Tensor): boolean {
    m.embeddingBackward(dweight, ids, dout);
    return false;
  }
  crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void { m.crossEntropy(loss, lse, logits, labels); }
  crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
    m.crossEntropyBackward(dlogits, logits, labels, lse, dloss, scale);
  }
  crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void {
    m.crossEntropyWithGrad(loss, lse, dlogits, logits, labels, scale);
  }
  softmax(out: Tensor, x: Tensor): void { m.softmax(out, x); }
  softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void { m.softmaxBackward(dx, dy, y); }
  topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void { m.topk(values, indices, x, k); }
  bincount(counts: Tensor, idx: Tensor): void { m.bincount(counts, idx); }
  expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void { m.expertOrder(order, offsets, expertOfSlot, numExperts); }
  gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void { m.gatherRows(out, x, idx, weights); }
  scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void { m.scatterAddRows(out, src, idx, weights); }
  expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void { m.expertOrderInverse(rowOfSlot, order, first, count); }
  sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void { m.sumSlotRows(out, rows, rowOfSlot, weights); }
  sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void {
    m.sumSlotRowsBackward(drows, dweights, dout, rows, tokenOfRow, weights);
  }

  mlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
    cpuMlaAttention(o, lse, qNope, qPe, kNope, kPe, v, opts);
  }
  mlaAttentionBackward(
    grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions,
  ): void {
    cpuMlaAttentionBackward(grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
  }
  attentionMerge(accO: Tensor, accLse: Tensor, o: Tensor, lse: Tensor): void { cpuAttentionMerge(accO, accLse, o, lse); }
  /** The CPU composes the ring from its per-step calls (parallel/ring_attention.ts), which are its oracle. */
  mlaAttentionRing(): boolean { return false; }
  mlaAttentionBackwardRing(): boolean { return false; }
  mlaAttentionBackwardBlock(
    dqAcc: Tensor, qFrom: number, grads: { dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions,
    ends?: MlaBlockEnds,
  ): void {
    mlaBackwardBlockByWhole(this, dqAcc, qFrom, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts, ends);
  }

  adam(param: Tensor, grad: Tensor, mom: Tensor, vel: Tensor, lowp: Tensor | null, h: AdamHyper): void {
    // A bf16 gradient is stored as its bits (u16): widen it, never read the bits as numbers.
    const P = denseView(param) as Float32Array, G = grad.dtype === 'f32' ? denseView(grad) as Float32Array : readF32(grad);
    const M = denseView(mom) as Float32Array, V = denseView(vel) as Float32Array;
    const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
    for (let i = 0; i < P.length; i++) {
      let g = G[i]! * h.gradScale;
      if (!h.decoupled) g += h.weightDecay * P[i]!;
      const mi = h.beta1 * M[i]! + (1 - h.beta1) * g;
      const vi = h.beta2 * V[i]! + (1 - h.beta2) * g * g;
      M[i] = mi; V[i] = vi;
      let upd = (mi / bc1) / (Math.sqrt(vi / bc2) + h.eps);
      if (h.decoupled) upd += h.weightDecay * P[i]!;
      P[i] = P[i]! - h.lr * upd;
    }
    if (lowp) writeF32(lowp, P);
  }

  adamMulti(list: TensorList<AdamSlot>, h: AdamHyper, grads: GradsAfter = 'zero'): void {
    const undecayed = { ...h, weightDecay: 0 };
    for (const s of list.entries) {
      this.adam(s.param, s.grad, s.m, s.v, s.lowp, s.decay ? h : undecayed);
      if (grads === 'zero') this.fill(s.grad, 0);
    }
  }

  adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper, grads: GradsAfter = 'zero'): void {
    list.entries.forEach((s, i) => adamLeanSlot(s, h, h.firstStream + i, grads));
  }
}
