// The CUDA backend: the Backend contract on one GPU. Memory comes from the caching allocator;
// every numeric method delegates to the launcher of its op (ops/<op>.ts, beside
// kernels/<op>.cu), which owns that kernel's defines, arguments and launch geometry. All work
// runs on the context's single compute stream (so results are ordered without events, and a
// freed block may serve the next op at once).
import type { DType, HostArray } from '../../tensor/dtype.js';
import { contiguousStrides, emptyTensor, type Tensor } from '../../tensor/tensor.js';
import type { AdamHyper, AttentionOptions, GradsAfter, LeanAdamHyper, Backend, BinaryOp, DeviceBuffer, MatmulOptions, MemoryStats, MlaBlockEnds, RingSlots, UnaryOp } from '../backend.js';
import type { AdamSlot, LeanAdamSlot, TensorList } from '../tensor_list.js';
import { AdamLauncher } from './ops/adam.js';
import { AdamMultiLauncher } from './ops/adam_multi.js';
import { AdamLeanMultiLauncher } from './ops/adam_lean_multi.js';
import { BincountLauncher } from './ops/bincount.js';
import { BinaryLauncher } from './ops/binary.js';
import { assertContiguous } from './ops/common.js';
import { CopyLauncher } from './ops/copy.js';
import { CrossEntropyLauncher } from './ops/cross_entropy.js';
import { EmbeddingLauncher } from './ops/embedding.js';
import { ExpertOrderLauncher } from './ops/expert_order.js';
import { FillLauncher } from './ops/fill.js';
import { GatherRowsLauncher } from './ops/gather_rows.js';
import { GroupedGemmLauncher, type GroupedGemmKernels, type GroupedGemmRequest } from './ops/grouped_gemm.js';
import { MatmulLauncher } from './ops/matmul.js';
import { MlaAttentionLauncher, type MlaGrads, type MlaKvGrads } from './ops/mla_attention.js';
import { mlaBackwardBlockByWhole } from '../mla_backward_block.js';
import { groupedDataPairByParts } from '../grouped_data_pair.js';
import { groupedWeightPairByParts } from '../grouped_weight_pair.js';
import { MlaAttentionGenericLauncher } from './ops/mla_attention_generic.js';
import { chooseMlaKernels, type MlaKernels, type MlaKernelsRequest } from './ops/mla_kernel_choice.js';
import { RmsNormLauncher } from './ops/rms_norm.js';
import { RopeLauncher } from './ops/rope.js';
import { ScatterAddRowsLauncher } from './ops/scatter_add_rows.js';
import { SlotRowsLauncher } from './ops/slot_rows.js';
import { SoftmaxLauncher } from './ops/softmax.js';
import { AttentionMergeLauncher } from './ops/attention_merge.js';
import { SumLastDimLauncher } from './ops/sum_last_dim.js';
import { SumSquaresLauncher } from './ops/sum_squares.js';
import { SumSquaresMultiLauncher } from './ops/sum_squares_multi.js';
import { SwigluLauncher } from './ops/swiglu.js';
import { TopkLauncher } from './ops/topk.js';
import { UnaryLauncher } from './ops/unary.js';
import { CachingAllocator } from './runtime/allocator.js';
import type { CudaContext } from './runtime/context.js';
import { CudaDeviceBuffer, devicePtr } from './runtime/device_buffer.js';

export interface CudaBackendOptions {
  /** MLA attention kernels (ops/mla_kernel_choice.ts); default "auto". */
  mlaKernels?: MlaKernelsRequest;
  /** Grouped expert GEMM kernels (ops/grouped_gemm.ts: 'mma', 'wgmma', 'tma' or 'tma_pair' on sm_90a, 'per_expert'); default "auto". */
  groupedGemm?: GroupedGemmRequest;
}

function hostArrayFor(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case 'f32': return new Float32Array(n);
    case 'bf16': return new Uint16Array(n);
    case 'i32': return new Int32Array(n);
    default: return dtype satisfies never;
  }
}

export class CudaBackend implements Backend {
  readonly kind = 'cuda' as const;
  readonly description: string;
  readonly allocator: CachingAllocator;
  private readonly mlaKernels: MlaKernelsRequest;

  private readonly copier: CopyLauncher;
  private readonly filler: FillLauncher;
  private readonly unaryOps: UnaryLauncher;
  private readonly binaryOps: BinaryLauncher;
  private readonly sumRows: SumLastDimLauncher;
  private readonly sumSquares: SumSquaresLauncher;
  private readonly sumSquaresList: SumSquaresMultiLauncher;
  private readonly gemm: MatmulLauncher;
  private readonly groupedGemm: GroupedGemmLauncher;
  private readonly norm: RmsNormLauncher;
  private readonly rotary: RopeLauncher;
  private readonly gatedUnit: SwigluLauncher;
  private readonly lookup: EmbeddingLauncher;
  private readonly loss: CrossEntropyLauncher;
  private readonly rowSoftmax: SoftmaxLauncher;
  private readonly merger: AttentionMergeLauncher;
  private readonly router: TopkLauncher;
  private readonly counts: BincountLauncher;
  private readonly grouping: ExpertOrderLauncher;
  private readonly gather: GatherRowsLauncher;
  private readonly scatter: ScatterAddRowsLauncher;
  private readonly slotRows: SlotRowsLauncher;
  private readonly attention: MlaAttentionLauncher;
  private readonly attentionGeneric: MlaAttentionGenericLauncher;
  private readonly optimizer: AdamLauncher;
  private readonly optimizerList: AdamMultiLauncher;
  private readonly optimizerLean: AdamLeanMultiLauncher;

  constructor(readonly ctx: CudaContext, options: CudaBackendOptions = {}) {
    this.description = ctx.description;
    this.allocator = new CachingAllocator(ctx);
    this.mlaKernels = options.mlaKernels ?? 'auto';
    const alloc = this.allocator;
    this.copier = new CopyLauncher(ctx, alloc);
    this.filler = new FillLauncher(ctx);
    this.unaryOps = new UnaryLauncher(ctx);
    this.binaryOps = new BinaryLauncher(ctx);
    this.sumRows = new SumLastDimLauncher(ctx, this.filler);
    this.sumSquares = new SumSquaresLauncher(ctx);
    this.sumSquaresList = new SumSquaresMultiLauncher(ctx, alloc);
    this.gemm = new MatmulLauncher(ctx, alloc, this.filler, this.unaryOps);
    this.groupedGemm = new GroupedGemmLauncher(ctx, alloc, this.gemm, this.sumSquaresList, options.groupedGemm);
    this.norm = new RmsNormLauncher(ctx, alloc);
    this.rotary = new RopeLauncher(ctx);
    this.gatedUnit = new SwigluLauncher(ctx);
    this.lookup = new EmbeddingLauncher(ctx, alloc, this.sumSquaresList);
    this.loss = new CrossEntropyLauncher(ctx);
    this.rowSoftmax = new SoftmaxLauncher(ctx);
    this.merger = new AttentionMergeLauncher(ctx);
    this.router = new TopkLauncher(ctx);
    this.counts = new BincountLauncher(ctx);
    this.grouping = new ExpertOrderLauncher(ctx, alloc);
    this.gather = new GatherRowsLauncher(ctx);
    this.scatter = new ScatterAddRowsLauncher(ctx, alloc, this.copier);
    this.slotRows = new SlotRowsLauncher(ctx);
    this.attention = new MlaAttentionLauncher(ctx, alloc);
    this.attentionGeneric = new MlaAttentionGenericLauncher(ctx, alloc, this.copier);
    this.optimizer = new AdamLauncher(ctx);
    this.optimizerList = new AdamMultiLauncher(ctx, alloc);
    this.optimizerLean = new AdamLeanMultiLauncher(ctx, alloc);
  }

  // ---- memory ----

  alloc(bytes: number): DeviceBuffer { return new CudaDeviceBuffer(this.allocator.alloc(bytes)); }

  free(buffer: DeviceBuffer): void {
    if (!(buffer instanceof CudaDeviceBuffer)) throw new Error('internal: freeing a buffer that CudaBackend did not allocate');
    this.allocator.free(buffer.block);
  }

  memoryStats(): MemoryStats {
    const st = this.allocator.stats();
    return { liveBytes: st.liveBytes, peakBytes: st.peakBytes, reservedBytes: st.reservedBytes, systemAllocations: st.deviceAllocations };
  }

  resetPeak(): void { this.allocator.resetPeak(); }

  write(dst: Tensor, src: HostArray): void {
    assertContiguous(dst, 'write destination');
    const expected = hostArrayFor(dst.dtype, 0).constructor;
    if (src.constructor !== expected || src.length !== dst.size) {
      throw new Error(`internal: write of ${src.constructor.name}[${src.length}] into ${dst}`);
    }
    if (dst.size > 0) this.ctx.upload(devicePtr(dst), src, dst.bytes);
  }

  read(src: Tensor): HostArray {
    const out = hostArrayFor(src.dtype, src.size);
    if (src.size === 0) return out;
    if (src.isContiguous()) {
      this.ctx.download(out, devicePtr(src), src.bytes);
      return out;
    }
    const tmp = this.allocator.alloc(src.bytes);
    try {
      this.copier.strided(tmp.ptr, src.dtype, contiguousStrides(src.shape), devicePtr(src), src.dtype, src.strides, src.shape);
      this.ctx.download(out, tmp.ptr, src.bytes);
    } finally {
      this.allocator.free(tmp);
    }
    return out;
  }

  synchronize(): void { this.ctx.synchronize(); }

  // ---- arithmetic: one launcher each ----

  copy(dst: Tensor, src: Tensor): void { this.copier.copy(dst, src); }
  fill(dst: Tensor, value: number): void { this.filler.fill(dst, value); }
  unary(op: UnaryOp, out: Tensor, x: Tensor, scalar = 0): void { this.unaryOps.unary(op, out, x, scalar); }
  binary(op: BinaryOp, out: Tensor, a: Tensor, b: Tensor): void { this.binaryOps.binary(op, out, a, b); }
  sumLastDim(out: Tensor, x: Tensor): void { this.sumRows.sumLastDim(out, x); }
  sumSquaresInto(out: Tensor, x: Tensor): void { this.sumSquares.sumSquaresInto(out, x); }
  sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void { this.sumSquaresList.sumSquaresMulti(out, list); }
  matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void { this.gemm.matmul(out, a, b, opts); }
  /** The grouped GEMM kernel set bf16 products run ('mma', 'wgmma', 'tma', 'tma_pair' or 'per_expert'); settable for tests and benchmarks. */
  get groupedGemmKernels(): GroupedGemmKernels { return this.groupedGemm.kernels; }
  set groupedGemmKernels(k: GroupedGemmKernels) { this.groupedGemm.use(k); }
  /** The gate-and-up data product as one tma launch rather than composed (GroupedGemmLauncher.gateUpData; on by default). */
  set groupedGemmGateUpData(on: boolean) { this.groupedGemm.gateUpData = on; }
  /** Under tma_pair, the weight products in CTA pairs (GroupedGemmLauncher.pairWeight; on by default) rather than tma's one-CTA kernel. */
  set groupedGemmPairWeight(on: boolean) { this.groupedGemm.pairWeight = on; }
  /** tma_pair, by pair kernel launched so far: 2-CTA clusters resident at once and launched last time (benchmarks print them). */
  get groupedGemmPairClusters(): ReadonlyMap<string, { resident: number; launched: number }> { return this.groupedGemm.pairClusters; }
  groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void { this.groupedGemm.groupedLinear(out, x, weights, offsets); }
  groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    this.groupedGemm.groupedLinearBackwardData(dx, dy, weights, offsets);
  }
  /**
   * The tma set's one-reduction kernel (rounded once; kernel header "Gate-and-up data product");
   * elsewhere the two products and their sum, the bits of autograd's sum of their two gradients (grouped_data_pair.ts).
   */
  groupedLinearBackwardDataPair(dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): void {
    if (this.groupedGemm.gateUpData && this.groupedGemm.groupedLinearBackwardDataPair(dx, dy1, dy2, w1, w2, offsets)) return;
    groupedDataPairByParts(this, dx, dy1, dy2, w1, w2, offsets);
  }
  groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1, squares?: Tensor): boolean {
    return this.groupedGemm.groupedLinearWeightGrad(dweights, dy, x, offsets, beta, squares);
  }
  /** tma_pair: one launch over both products (kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs"); elsewhere the two products (grouped_weight_pair.ts). */
  groupedLinearWeightGradPair(dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1,
                              squares?: Tensor): boolean {
    return this.groupedGemm.groupedLinearWeightGradPair(dw1, dw2, dy1, dy2, x, offsets, beta, squares)
      ?? groupedWeightPairByParts(this, dw1, dw2, dy1, dy2, x, offsets, beta, squares);
  }
  rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void { this.norm.rmsNorm(y, rstd, x, w, eps); }
  rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void { this.norm.rmsNormBackward(dx, dw, dy, x, w, rstd); }
  rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void { this.rotary.rope(out, x, cos, sin); }
  ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void { this.rotary.ropeBackward(dx, dout, cos, sin); }
  groupedSwiGLU(h: Tensor, g: Tensor, u: Tensor, x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): void {
    if (this.groupedGemm.groupedSwiGLU(h, g, u, x, gates, ups, offsets)) return;
    this.groupedLinear(g, x, gates, offsets);
    this.groupedLinear(u, x, ups, offsets);
    this.swiglu(h, g, u);
  }
  swiglu(out: Tensor, gate: Tensor, up: Tensor): void { this.gatedUnit.swiglu(out, gate, up); }
  swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void { this.gatedUnit.swigluBackward(dgate, dup, dout, gate, up); }
  embedding(out: Tensor, ids: Tensor, weight: Tensor): void { this.lookup.embedding(out, ids, weight); }
  embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, squares?: Tensor): boolean {
    return this.lookup.embeddingBackward(dweight, ids, dout, squares);
  }
  crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void { this.loss.crossEntropy(loss, lse, logits, labels); }
  crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
    this.loss.crossEntropyBackward(dlogits, logits, labels, lse, dloss, scale);
  }
  crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void {
    this.loss.crossEntropyWithGrad(loss, lse, dlogits, logits, labels, scale);
  }
  softmax(out: Tensor, x: Tensor): void { this.rowSoftmax.softmax(out, x); }
  softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void { this.rowSoftmax.softmaxBackward(dx, dy, y); }
  topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void { this.router.topk(values, indices, x, k); }
  bincount(counts: Tensor, idx: Tensor): void { this.counts.bincount(counts, idx); }
  expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void {
    this.grouping.expertOrder(order, offsets, expertOfSlot, numExperts);
  }
  gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void { this.gather.gatherRows(out, x, idx, weights); }
  scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void { this.scatter.scatterAddRows(out, src, idx, weights); }
  expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void { this.grouping.expertOrderInverse(rowOfSlot, order, first, count); }
  sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void { this.slotRows.sumSlotRows(out, rows, rowOfSlot, weights); }
  sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void {
    this.slotRows.sumSlotRowsBackward(drows, dweights, dout, rows, tokenOfRow, weights);
  }
  adam(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lowp: Tensor | null, h: AdamHyper): void { this.optimizer.adam(param, grad, m, v, lowp, h); }
  adamMulti(list: TensorList<AdamSlot>, h: AdamHyper, grads: GradsAfter = 'zero'): void { this.optimizerList.adamMulti(list, h, grads); }
  adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper, grads: GradsAfter = 'zero'): void { this.optimizerLean.adamLeanMulti(list, h, grads); }

  // ---- MLA attention: the kernels chooseMlaKernels picks for these tensors ----

  /** The MLA kernel set this backend runs for these inputs. */
  mlaKernelsFor(qNope: Tensor, qPe: Tensor, v: Tensor): MlaKernels {
    return chooseMlaKernels({
      arch: this.ctx.arch, computeCapability: this.ctx.computeCapability, dtype: qNope.dtype,
      dNope: qNope.shape[3]!, dRope: qPe.shape[3]!, dV: v.shape[3]!, request: this.mlaKernels,
    });
  }

  /**
   * Runs fn on q_nope, k_nope and v as the kernel set takes them: the Hopper kernels read views of
   * a wider projection through tensor maps (the model's split makes no copy); the others get
   * contiguous copies, freed when fn returns.
   */
  private withAttentionRows(hopper: boolean, rows: readonly [Tensor, Tensor, Tensor], fn: (qNope: Tensor, kNope: Tensor, v: Tensor) => void): void {
    if (hopper || rows.every((t) => t.isContiguous())) { fn(...rows); return; }
    const copies = rows.map((t) => {
      if (t.isContiguous()) return null;
      const c = emptyTensor(this, t.shape, t.dtype);
      this.copy(c, t);
      return c;
    });
    try {
      fn(copies[0] ?? rows[0], copies[1] ?? rows[1], copies[2] ?? rows[2]);
    } finally {
      for (const c of copies) c?.dispose();
    }
  }

  mlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
    const kernels = this.mlaKernelsFor(qNope, qPe, v);
    this.withAttentionRows(kernels === 'hopper', [qNope, kNope, v], (qn, kn, vv) => {
      if (kernels === 'generic') this.attentionGeneric.forward(o, lse, qn, qPe, kn, kPe, vv, opts);
      else this.attention.forward(kernels, o, lse, qn, qPe, kn, kPe, vv, opts);
    });
  }

  mlaAttentionBackward(grads: MlaGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor,
                       lse: Tensor, opts: AttentionOptions): void {
    const kernels = this.mlaKernelsFor(qNope, qPe, v);
    this.withAttentionRows(kernels === 'hopper', [qNope, kNope, v], (qn, kn, vv) => {
      if (kernels === 'generic') this.attentionGeneric.backward(grads, dout, qn, qPe, kn, kPe, vv, o, lse, opts);
      else this.attention.backward(kernels, grads, dout, qn, qPe, kn, kPe, vv, o, lse, opts);
    });
  }

  attentionMerge(accO: Tensor, accLse: Tensor, o: Tensor, lse: Tensor): void { this.merger.merge(accO, accLse, o, lse); }

  /** Hopper kernels and a zigzag chunk of whole 128-key tiles: the ring's blocks in one launch (kernel headers, "Ring slots"). */
  private ringInOneLaunch(qNope: Tensor, qPe: Tensor, v: Tensor, ring: RingSlots): boolean {
    return ring.ranks >= 2 && (qNope.shape[1]! / 2) % 128 === 0 && this.mlaKernelsFor(qNope, qPe, v) === 'hopper';
  }

  mlaAttentionRing(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, ring: RingSlots, scale: number): boolean {
    if (!this.ringInOneLaunch(qNope, qPe, v, ring)) return false;
    this.attention.forward('hopper', o, lse, qNope, qPe, kNope, kPe, v, { causal: true, scale, ring });
    return true;
  }

  mlaAttentionBackwardRing(grads: MlaGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor,
                           lse: Tensor, ring: RingSlots, scale: number): boolean {
    if (!this.ringInOneLaunch(qNope, qPe, v, ring)) return false;
    // One launch is the ring's first and last block: its preprocess zeroes the f32 dQ
    // accumulator, its finish rounds it into dq.
    const [B, L, H] = qNope.shape as [number, number, number];
    const dqAcc = emptyTensor(this, [B, L, H, qNope.shape[3]! + qPe.shape[3]!], 'f32');
    try {
      this.attention.backwardBlock(dqAcc, 0, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, { causal: true, scale },
        { overwrite: true, finish: { dqNope: grads.dqNope, dqPe: grads.dqPe } }, ring);
    } finally {
      dqAcc.dispose();
    }
    return true;
  }

  mlaAttentionBackwardBlock(dqAcc: Tensor, qFrom: number, grads: MlaKvGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor,
                            kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions, ends?: MlaBlockEnds): void {
    // Only the Hopper backward adds dQ into part of a longer accumulator (a tensor map of its rows).
    if (this.mlaKernelsFor(qNope, qPe, v) === 'hopper') this.attention.backwardBlock(dqAcc, qFrom, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts, ends);
    else mlaBackwardBlockByWhole(this, dqAcc, qFrom, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts, ends);
  }
}
