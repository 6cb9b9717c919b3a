// Ring attention for MLA over the context-parallel group: causal attention of a sequence split
// over cp ranks in the zigzag layout (zigzag.ts), as one differentiable op.
//
// What travels: the expanded k_nope and v with the shared k_pe, not the MLA latent. Per token
// (DeepSeek-V2: H = 16, bf16) k_nope|v is H·(128+128)·2 = 8192 bytes and k_pe 128 bytes, 8320
// in all; the latent c_kv|k_pe is (512+64)·2 = 1152 bytes, 7.2× fewer. But the latent needs
// kv_b_proj (512 → H·256) applied by every rank to every block it receives, forward and again in
// backward, with kv_b_proj's weight gradient formed on every rank: 2·512·4096 FLOPs a key token
// forward against 2·c·H·320 for the attention it feeds (c = the rank's 2 chunks' tokens), that is
// +20% at s = 16384, cp = 4 (c = 4096) and +80% at s = 4096, cp = 4. The expanded block of a ring
// step (c = 4096: 34 MB) moves over NVLink (~400 GB/s) in ~85 µs against the ~570 µs of
// attention its two full blocks take at 600 TFLOP/s, so within a node the transfers cost ~15%
// of the attention while they are not overlapped (below); across nodes (~50 GB/s a GPU) they
// would cost more than the attention, and the latent would be the better choice there. The op takes the five pieces the model already has, so cp = 1 and the
// whole-sequence path share them.
//
// The k/v travel first: cp − 1 ring steps pass them on to r + 1 (three messages a step: k_nope,
// k_pe, v), and the rank keeps every block it sees in a slot (Backend's RingSlots: slot j holds
// the k/v of rank (r − j) mod cp). Then the attention, where it sees every key:
//   in one launch (Backend.mlaAttentionRing; CUDA's Hopper kernels, c a multiple of 128): each
//     query tile walks its keys of every slot under one online softmax, so nothing is merged,
//     and the launch has the whole sequence's shape of work (s/128 query tiles a head, of the
//     same mean length), where a launch per step is a quarter to a half as long and runs short
//     launches' lower TFLOP/s (bench/attention_notes.md);
//   else one launch per ring step (zigzag.ts, ringStep): a rank's local tokens are chunks r and
//     2·cp−1−r in increasing global order, so with its own k/v (slot 0) the ordinary causal mask
//     over the 2·c local tokens is exact (one causal launch of length 2·c); with the k/v of a
//     rank j < r both q chunks see kv chunk j fully and chunk 2·cp−1−j not at all (one unmasked
//     launch, q 2·c × kv c); with j > r only q chunk 2·cp−1−r sees both kv chunks (q c × kv 2·c).
//     Each q half of a launch's result merges into that half's f32 output by log-sum-exp
//     (Backend.attentionMerge). kv half 0 of a slot is a view when B = 1 and a contiguous copy
//     when B > 1 (each batch row's second half sits in between).
// What this gives up: the transfers no longer overlap this layer's attention (they did not
// before either: a step's launch waited for its k/v). What overlapping them would take: the
// one-launch kernel's producer waiting on a per-slot arrival flag, with CTAs left free for
// the communication kernels.
//
// Backward: the k/v travel again into slots; one launch (Backend.mlaAttentionBackwardRing) or
// one per step (Backend.mlaAttentionBackwardBlock, in the order of the k/v's owners r, r + 1,
// …) gives dq, through one f32 accumulator of the L local queries zeroed and rounded once, and
// each slot's k/v gradient from this rank's queries. Those go home around the ring the other
// way: an f32 accumulator of dk_nope, dk_pe (summed over heads) and dv travels to r − 1, each
// rank adding its slot of the accumulator's owner, which receives the sum after cp steps.
//
// Shape legend: B batch, L = S/cp local tokens (two chunks of c = L/2), H heads, Dn/Dr/Dv widths.
import { backendOf, type AttentionOptions, type Backend } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { tidy } from '../tensor/scope.js';
import { contiguousStrides, emptyTensor, type Shape, type Tensor } from '../tensor/tensor.js';
import type { DType } from '../tensor/dtype.js';
import type { Communicator } from './communicator.js';
import { ringStep, type RingStep } from './zigzag.js';

/** Options of ringMlaAttention: the softmax scale (attention over the whole sequence is causal). */
export interface RingAttentionOptions { scale: number }

interface Dims { B: number; L: number; c: number; H: number; Dn: number; Dr: number; Dv: number }

/** f32 accumulators of dk_nope, dk_pe, dv for each local half of one rank's k/v, in one buffer. */
interface GradPack { buf: Tensor; halves: [KvHalf, KvHalf] }
/** k_nope [B,c,H,Dn], k_pe [B,c,1,Dr] and v [B,c,H,Dv] (or their gradients) of one local half. */
interface KvHalf { kNope: Tensor; kPe: Tensor; v: Tensor }

function gradPack(be: Backend, d: Dims): GradPack {
  const shapes: Shape[] = [[d.B, d.c, d.H, d.Dn], [d.B, d.c, 1, d.Dr], [d.B, d.c, d.H, d.Dv]];
  const per = shapes.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  const buf = emptyTensor(be, [2 * per], 'f32');
  let at = buf.offset;
  const half = (): KvHalf => {
    const [kNope, kPe, v] = shapes.map((s) => { const t = buf.view(s, contiguousStrides(s), at); at += t.size; return t; }) as [Tensor, Tensor, Tensor];
    return { kNope, kPe, v };
  };
  return { buf, halves: [half(), half()] };
}

/** A view of local half x (0: the first c tokens, 1: the last c) of t [B, L, …] along dimension 1. */
function halfView(t: Tensor, x: 0 | 1, c: number): Tensor {
  return t.view([t.shape[0]!, c, ...t.shape.slice(2)], t.strides, t.offset + x * c * t.strides[1]!);
}

/** A contiguous copy of half x of t, in dtype (t's own by default). */
function halfOf(be: Backend, t: Tensor, x: 0 | 1, c: number, dtype: DType = t.dtype): Tensor {
  const view = halfView(t, x, c), out = emptyTensor(be, view.shape, dtype);
  be.copy(out, view);
  view.dispose();
  return out;
}

/** t itself (as a new view) when contiguous, else a contiguous copy: what the attention kernels take. Dispose after use. */
function contiguous(be: Backend, t: Tensor): Tensor {
  if (t.isContiguous()) return t.view(t.shape, t.strides, t.offset);
  const out = emptyTensor(be, t.shape, t.dtype);
  be.copy(out, t);
  return out;
}

/** View of half x of an lse [B, H, L] as [B, H, c]. */
function lseHalfView(lse: Tensor, x: 0 | 1, c: number): Tensor {
  return lse.view([lse.shape[0]!, lse.shape[1]!, c], lse.strides, lse.offset + x * c);
}

/** A contiguous copy of half x of an lse [B, H, L]. */
function lseHalfOf(be: Backend, lse: Tensor, x: 0 | 1, c: number): Tensor {
  const view = lseHalfView(lse, x, c), out = emptyTensor(be, view.shape, lse.dtype);
  be.copy(out, view);
  view.dispose();
  return out;
}

/** The k/v operands of a step's launch: the whole pack (kv 2·c) or its half 0 (kv c; a copy when B > 1). Dispose after use. */
function kvOperands(be: Backend, p: KvHalf, kv: RingStep['kv'], c: number): KvHalf {
  const pick = (t: Tensor): Tensor => {
    if (kv === 'both') return t.view(t.shape, t.strides, t.offset);
    const view = halfView(t, 0, c), out = contiguous(be, view);
    view.dispose();
    return out;
  };
  return { kNope: pick(p.kNope), kPe: pick(p.kPe), v: pick(p.v) };
}

function disposeKv(t: KvHalf): void {
  t.kNope.dispose();
  t.kPe.dispose();
  t.v.dispose();
}

/** Local halves (0, 1) a side of a step covers, with the view of half x of a result [B, 2·c or c, …] of that side. */
function sideHalves(side: 'both' | 0 | 1, c: number): { x: 0 | 1; part: (t: Tensor) => Tensor; partLse: (t: Tensor) => Tensor }[] {
  const whole = (t: Tensor) => t.view(t.shape, t.strides, t.offset);
  if (side !== 'both') return [{ x: side, part: whole, partLse: whole }];
  return ([0, 1] as const).map((x) => ({ x, part: (t: Tensor) => halfView(t, x, c), partLse: (t: Tensor) => lseHalfView(t, x, c) }));
}

/** Copies the local k/v pieces [B, L, …] into a slot. */
function fillSlot(be: Backend, p: KvHalf, kNope: Tensor, kPe: Tensor, v: Tensor): void {
  be.copy(p.kNope, kNope);
  be.copy(p.kPe, kPe);
  be.copy(p.v, v);
}

function dimsOf(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, cp: number): Dims {
  const [B, L, H, Dn] = qNope.shape as [number, number, number, number];
  const Dr = qPe.shape[3]!, Dv = v.shape[3]!;
  const want: [Tensor, Shape, string][] = [[qPe, [B, L, H, Dr], 'q_pe'], [kNope, [B, L, H, Dn], 'k_nope'], [kPe, [B, L, 1, Dr], 'k_pe'], [v, [B, L, H, Dv], 'v']];
  for (const [t, s, name] of want) if (t.shape.join() !== s.join()) throw new Error(`internal: ring attention ${name} is [${t.shape}], expected [${s}]`);
  if (L % 2 !== 0) throw new Error(`internal: ring attention needs an even local length (two zigzag chunks), got ${L} tokens on each of ${cp} ranks`);
  return { B, L, c: L / 2, H, Dn, Dr, Dv };
}

/** k_nope [n·B,L,H,Dn], k_pe [n·B,L,1,Dr], v [n·B,L,H,Dv]: the k/v of all n ranks of the ring in slots (RingSlots; slot 0 this rank's own), or their gradients. */
interface KvSlots { kNope: Tensor; kPe: Tensor; v: Tensor }

/** Slot j of t [n·B, L, …] as [B, L, …] (a contiguous view). */
function slotView(t: Tensor, j: number, B: number): Tensor {
  const s = [B, ...t.shape.slice(1)];
  return t.view(s, contiguousStrides(s), t.offset + j * B * t.strides[0]!);
}

function slotOf(x: KvSlots, j: number, B: number): KvHalf {
  return { kNope: slotView(x.kNope, j, B), kPe: slotView(x.kPe, j, B), v: slotView(x.v, j, B) };
}

function emptySlots(be: Backend, d: Dims, n: number, dtype: DType): KvSlots {
  const { B, L, H, Dn, Dr, Dv } = d;
  return { kNope: emptyTensor(be, [n * B, L, H, Dn], dtype), kPe: emptyTensor(be, [n * B, L, 1, Dr], dtype), v: emptyTensor(be, [n * B, L, H, Dv], dtype) };
}

/**
 * The ring's k/v transfers: slot 0 gets this rank's k/v, and at step j = 1 … cp−1 the rank
 * passes slot j − 1 on to r + 1 and receives slot j from r − 1, so slot j ends up holding the k/v
 * of rank (r − j) mod cp (RingSlots).
 */
function gatherSlots(be: Backend, comm: Communicator, d: Dims, kNope: Tensor, kPe: Tensor, v: Tensor): KvSlots {
  const cp = comm.size, r = comm.rank, slots = emptySlots(be, d, cp, kNope.dtype);
  const own = slotOf(slots, 0, d.B);
  fillSlot(be, own, kNope, kPe, v);
  disposeKv(own);
  for (let j = 1; j < cp; j++) {
    const from = slotOf(slots, j - 1, d.B), to = slotOf(slots, j, d.B);
    for (const k of ['kNope', 'kPe', 'v'] as const) comm.sendRecv(from[k], (r + 1) % cp, to[k], (r - 1 + cp) % cp);
    disposeKv(from);
    disposeKv(to);
  }
  return slots;
}

/** The forward ring: o [B,L,H,Dv] in v's dtype and the merged lse [B,H,L] f32. */
function ringForward(be: Backend, comm: Communicator, d: Dims, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, scale: number): { o: Tensor; lse: Tensor } {
  const o = emptyTensor(be, [d.B, d.L, d.H, d.Dv], v.dtype), lse = emptyTensor(be, [d.B, d.H, d.L], 'f32');
  tidy(() => {
    const slots = gatherSlots(be, comm, d, kNope, kPe, v);
    const qn = contiguous(be, qNope), qp = contiguous(be, qPe);
    if (comm.size > 1 && be.mlaAttentionRing(o, lse, qn, qp, slots.kNope, slots.kPe, slots.v, { ranks: comm.size, rank: comm.rank }, scale)) return;
    forwardBySteps(be, comm, d, o, lse, qn, qp, slots, scale);
  });
  return { o, lse };
}

/**
 * The forward composed of one launch per ring step (header), for backends without the ring in
 * one launch: step j's launch with the k/v of slot j, and each q half merged into that half's f32
 * output by log-sum-exp.
 */
function forwardBySteps(be: Backend, comm: Communicator, d: Dims, o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, slots: KvSlots, scale: number): void {
  const { B, L, c, H, Dv } = d, cp = comm.size, r = comm.rank;
  const q = {
    both: { nope: qNope, pe: qPe },
    1: cp > 1 ? { nope: halfOf(be, qNope, 1, c), pe: halfOf(be, qPe, 1, c) } : null,
  };
  const acc = ([0, 1] as const).map(() => ({ o: emptyTensor(be, [B, c, H, Dv], 'f32'), lse: emptyTensor(be, [B, H, c], 'f32') }));
  for (let j = 0; j < cp; j++) {
    const step = ringStep(cp, r, (r - j + cp) % cp);
    const qs = q[step.q]!, Sq = step.q === 'both' ? L : c;
    const slot = slotOf(slots, j, B), kv = kvOperands(be, slot, step.kv, c);
    const bo = emptyTensor(be, [B, Sq, H, Dv], o.dtype), bl = emptyTensor(be, [B, H, Sq], 'f32');
    be.mlaAttention(bo, bl, qs.nope, qs.pe, kv.kNope, kv.kPe, kv.v, { causal: step.causal, scale });
    disposeKv(kv);
    disposeKv(slot);
    for (const { x, part, partLse } of sideHalves(step.q, c)) {
      const ov = part(bo), lv = partLse(bl), a = acc[x]!;
      // Step 0 (own k/v, both halves) starts each half's accumulator.
      if (j === 0) {
        be.copy(a.o, ov);
        be.copy(a.lse, lv);
      } else {
        be.attentionMerge(a.o, a.lse, ov, lv);
      }
      ov.dispose();
      lv.dispose();
    }
    bo.dispose();
    bl.dispose();
  }
  for (const x of [0, 1] as const) {
    const a = acc[x]!, ov = halfView(o, x, c), lv = lseHalfView(lse, x, c);
    be.copy(ov, a.o);
    be.copy(lv, a.lse);
    ov.dispose();
    lv.dispose();
  }
}

interface InputGrads { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor }

/** The backward ring (see the header): the five input gradients in the inputs' dtypes. */
function ringBackward(
  be: Backend, comm: Communicator, d: Dims, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor,
  o: Tensor, lse: Tensor, scale: number,
): InputGrads {
  const { B, L, c, H, Dn, Dr, Dv } = d, cp = comm.size, r = comm.rank;
  const out: InputGrads = {
    dqNope: emptyTensor(be, [B, L, H, Dn], qNope.dtype), dqPe: emptyTensor(be, [B, L, H, Dr], qPe.dtype),
    dkNope: emptyTensor(be, [B, L, H, Dn], kNope.dtype), dkPe: emptyTensor(be, [B, L, 1, Dr], kPe.dtype), dv: emptyTensor(be, [B, L, H, Dv], v.dtype),
  };
  tidy(() => {
    const slots = gatherSlots(be, comm, d, kNope, kPe, v);
    // Slot j's gradient: that rank's k/v gradient from this rank's queries.
    const grads = emptySlots(be, d, cp, kNope.dtype);
    const ins = { qNope: contiguous(be, qNope), qPe: contiguous(be, qPe), dout: contiguous(be, dout), o: contiguous(be, o), lse: contiguous(be, lse) };
    const all = { dqNope: out.dqNope, dqPe: out.dqPe, dkNope: grads.kNope, dkPe: grads.kPe, dv: grads.v };
    const oneLaunch = cp > 1 && be.mlaAttentionBackwardRing(all, ins.dout, ins.qNope, ins.qPe, slots.kNope, slots.kPe, slots.v, ins.o, ins.lse,
      { ranks: cp, rank: r }, scale);
    if (!oneLaunch) backwardBySteps(be, comm, d, out, grads, ins, slots, scale);
    // The k/v gradients go home: an f32 accumulator travels to r − 1 at every step, and at step j
    // each rank adds its slot of rank (r + j) mod cp, so after cp steps every rank holds the sum
    // over all ranks' queries of its own k/v's gradient.
    let acc = gradPack(be, d), accNext = cp > 1 ? gradPack(be, d) : acc;
    be.fill(acc.buf, 0);
    const addInto = (a: Tensor, b: Tensor) => { be.binary('add', a, a, b); b.dispose(); };
    for (let j = 0; j < cp; j++) {
      const owner = (r + j) % cp, g = slotOf(grads, (r - owner + cp) % cp, B);
      // The halves some query of this rank sees: half 0 of a lower rank's k/v, else both.
      for (const x of ringStep(cp, r, owner).kv === 'both' ? [0, 1] as const : [0] as const) {
        const a = acc.halves[x];
        addInto(a.kNope, halfView(g.kNope, x, c));
        addInto(a.kPe, halfView(g.kPe, x, c));
        addInto(a.v, halfView(g.v, x, c));
      }
      disposeKv(g);
      if (cp === 1) break;
      comm.sendRecv(acc.buf, (r - 1 + cp) % cp, accNext.buf, (r + 1) % cp);
      [acc, accNext] = [accNext, acc];
    }
    for (const x of [0, 1] as const) {
      const a = acc.halves[x];
      const pairs: [Tensor, Tensor][] = [[out.dkNope, a.kNope], [out.dkPe, a.kPe], [out.dv, a.v]];
      for (const [dst, src] of pairs) {
        const view = halfView(dst, x, c);
        be.copy(view, src);
        view.dispose();
      }
    }
  });
  return out;
}

/**
 * The backward composed of one launch per ring step (header), for backends without the ring in
 * one launch, in the order of the k/v's owners r, r + 1, …: each step's dq added into one f32
 * accumulator of the L local queries (zeroed by the first, rounded into dq by the last) and its
 * k/v gradient into the halves of that owner's slot the step covers.
 */
function backwardBySteps(be: Backend, comm: Communicator, d: Dims, out: InputGrads, grads: KvSlots,
  ins: { qNope: Tensor; qPe: Tensor; dout: Tensor; o: Tensor; lse: Tensor }, slots: KvSlots, scale: number): void {
  const { B, L, c, H, Dn, Dr, Dv } = d, cp = comm.size, r = comm.rank;
  // The q side of a launch: all L local tokens, or half 1 (contiguous copies).
  const q = {
    both: ins,
    1: cp > 1 ? { qNope: halfOf(be, ins.qNope, 1, c), qPe: halfOf(be, ins.qPe, 1, c), dout: halfOf(be, ins.dout, 1, c), o: halfOf(be, ins.o, 1, c), lse: lseHalfOf(be, ins.lse, 1, c) } : null,
  };
  // dq of all L local tokens, q_nope's columns then q_pe's, in units of 1/scale.
  const dqAcc = emptyTensor(be, [B, L, H, Dn + Dr], 'f32');
  // One set of the key side's launch gradients per kv length a step uses.
  const gradsOf = new Map<number, KvHalf>();
  const gradsFor = (Skv: number): KvHalf => {
    let g = gradsOf.get(Skv);
    if (!g) {
      g = { kNope: emptyTensor(be, [B, Skv, H, Dn], grads.kNope.dtype), kPe: emptyTensor(be, [B, Skv, 1, Dr], grads.kPe.dtype), v: emptyTensor(be, [B, Skv, H, Dv], grads.v.dtype) };
      gradsOf.set(Skv, g);
    }
    return g;
  };
  for (let j = 0; j < cp; j++) {
    const owner = (r + j) % cp, s = (r - owner + cp) % cp;
    const step = ringStep(cp, r, owner);
    const qs = q[step.q]!, slot = slotOf(slots, s, B), kv = kvOperands(be, slot, step.kv, c);
    const g = gradsFor(step.kv === 'both' ? L : c);
    be.mlaAttentionBackwardBlock(dqAcc, step.q === 'both' ? 0 : c, { dkNope: g.kNope, dkPe: g.kPe, dv: g.v }, qs.dout, qs.qNope, qs.qPe,
      kv.kNope, kv.kPe, kv.v, qs.o, qs.lse, { causal: step.causal, scale },
      { overwrite: j === 0, ...(j === cp - 1 ? { finish: { dqNope: out.dqNope, dqPe: out.dqPe } } : {}) });
    disposeKv(kv);
    disposeKv(slot);
    const to = slotOf(grads, s, B);
    for (const t of ['kNope', 'kPe', 'v'] as const) {
      const dst = step.kv === 'both' ? to[t].view(to[t].shape, to[t].strides, to[t].offset) : halfView(to[t], 0, c);
      be.copy(dst, g[t]);
      dst.dispose();
    }
    disposeKv(to);
  }
}

/**
 * Causal MLA attention of the whole sequence whose zigzag share this rank holds: qNope
 * [B,L,H,Dn], qPe [B,L,H,Dr], kNope [B,L,H,Dn], kPe [B,L,1,Dr], v [B,L,H,Dv] (the local tokens,
 * chunks r and 2·cp−1−r); every rank of `comm` (the cp group) calls it with the same shapes.
 * Returns o [B,L,H,Dv] (differentiable) and the merged lse [B,H,L] f32. With cp = 1 it computes
 * the same function as mlaAttention (the same one causal launch).
 */
export function ringMlaAttention(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: RingAttentionOptions, comm: Communicator): { o: Tensor; lse: Tensor } {
  const be = backendOf(qNope);
  const d = dimsOf(qNope, qPe, kNope, kPe, v, comm.size);
  const { o, lse } = ringForward(be, comm, d, qNope, qPe, kNope, kPe, v, opts.scale);
  const node = beginNode('ringMlaAttention', [qNope, qPe, kNope, kPe, v], 1);
  if (node) {
    const s = [qNope, qPe, kNope, kPe, v, o, lse].map((t) => node.save(t)) as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
    node.rule = ([g]) => {
      const r = ringBackward(be, comm, d, g!, ...s, opts.scale);
      return [r.dqNope, r.dqPe, r.dkNope, r.dkPe, r.dv];
    };
  }
  linkOutputs(node, [o]);
  return { o, lse };
}

/** The unused-parameter guard of AttentionOptions: ring attention is causal over the whole sequence. */
export function ringOptions(opts: AttentionOptions): RingAttentionOptions {
  if (!opts.causal) throw new Error('internal: ring attention computes causal attention over the whole sequence');
  return { scale: opts.scale };
}
