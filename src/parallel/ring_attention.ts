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
// step (c = 4096: 34 MB) moves over NVLink (~400 GB/s) in ~85 µs while the step's two full
// blocks take ~570 µs of attention at 600 TFLOP/s, so it is hidden where cp stays within a
// node; across nodes (~50 GB/s a GPU) it would not be, and the latent would be the better
// choice there. The op takes the five pieces the model already has, so cp = 1 and the
// whole-sequence path share them.
//
// One attention launch per ring step (zigzag.ts, ringStep): a rank's local tokens are chunks r
// and 2·cp−1−r in increasing global order, so with its own k/v (step 0) the ordinary causal mask
// over the 2·c local tokens is exact (one causal launch of length 2·c); with the k/v of a rank
// j < r both q chunks see kv chunk j fully and chunk 2·cp−1−j not at all (one unmasked launch,
// q 2·c × kv c); with j > r only q chunk 2·cp−1−r sees both kv chunks (q c × kv 2·c). So a rank
// makes 1 causal launch and cp−1 unmasked ones with Sq ≠ Skv, each large enough to fill the GPU,
// instead of 2·cp+1 launches of c×c chunk blocks. The k/v pack holds each of k_nope, k_pe and v
// contiguous over both halves, so kv 2·c is a view of it; kv half 0 is a view too, which the
// kernels take as it is when B = 1 and as a contiguous copy when B > 1 (its rows are then not
// contiguous: each batch row's second half sits in between).
//
// Forward: cp steps; at step j the rank holds the k/v of rank (r − j) mod cp, makes that step's
// launch through Backend.mlaAttention with its lse, and merges each q half of the result into
// that half's f32 output by log-sum-exp in one pass (Backend.attentionMerge), then passes the k/v on to r + 1. Backward:
// the FlashAttention identity per launch with the MERGED o and lse; k/v travel the other way (to
// r − 1) together with an f32 accumulator of their dk_nope, dk_pe (summed over heads) and dv,
// which arrives back at its owner after the last step; dq stays local: every step adds into one
// f32 accumulator of the L local queries (Backend.mlaAttentionBackwardBlock), zeroed once and
// rounded once, so the per-query part of a backward is paid once per ring, not once per step.
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

/** k_nope [B,L,H,Dn], k_pe [B,L,1,Dr] and v [B,L,H,Dv] of one rank, each contiguous, as views of one flat buffer (one message per ring step). */
interface KvPack { buf: Tensor; kNope: Tensor; kPe: Tensor; v: Tensor }

function kvPack(be: Backend, d: Dims, dtype: DType): KvPack {
  const shapes: Shape[] = [[d.B, d.L, d.H, d.Dn], [d.B, d.L, 1, d.Dr], [d.B, d.L, d.H, d.Dv]];
  const buf = emptyTensor(be, [shapes.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0)], dtype);
  let at = buf.offset;
  const [kNope, kPe, v] = shapes.map((s) => { const t = buf.view(s, contiguousStrides(s), at); at += t.size; return t; }) as [Tensor, Tensor, Tensor];
  return { buf, kNope, kPe, v };
}

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
function kvOperands(be: Backend, p: KvPack, kv: RingStep['kv'], c: number): KvHalf {
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

/** Copies the local k/v pieces [B, L, …] into a pack. */
function fillPack(be: Backend, p: KvPack, kNope: Tensor, kPe: Tensor, v: Tensor): void {
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

/** The forward ring: o [B,L,H,Dv] in v's dtype and the merged lse [B,H,L] f32. */
function ringForward(be: Backend, comm: Communicator, d: Dims, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, scale: number): { o: Tensor; lse: Tensor } {
  const { B, L, c, H, Dv } = d, cp = comm.size, r = comm.rank;
  const o = emptyTensor(be, [B, L, H, Dv], v.dtype), lse = emptyTensor(be, [B, H, L], 'f32');
  tidy(() => {
    const q = {
      both: { nope: contiguous(be, qNope), pe: contiguous(be, qPe) },
      1: cp > 1 ? { nope: halfOf(be, qNope, 1, c), pe: halfOf(be, qPe, 1, c) } : null,
    };
    let cur = kvPack(be, d, kNope.dtype), next = cp > 1 ? kvPack(be, d, kNope.dtype) : cur;
    fillPack(be, cur, kNope, kPe, v);
    const acc = ([0, 1] as const).map(() => ({ o: emptyTensor(be, [B, c, H, Dv], 'f32'), lse: emptyTensor(be, [B, H, c], 'f32') }));
    for (let j = 0; j < cp; j++) {
      const step = ringStep(cp, r, (r - j + cp) % cp);
      const qs = q[step.q]!, Sq = step.q === 'both' ? L : c;
      const kv = kvOperands(be, cur, step.kv, c);
      const bo = emptyTensor(be, [B, Sq, H, Dv], v.dtype), bl = emptyTensor(be, [B, H, Sq], 'f32');
      be.mlaAttention(bo, bl, qs.nope, qs.pe, kv.kNope, kv.kPe, kv.v, { causal: step.causal, scale });
      disposeKv(kv);
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
      if (j < cp - 1) {
        comm.sendRecv(cur.buf, (r + 1) % cp, next.buf, (r - 1 + cp) % cp);
        [cur, next] = [next, cur];
      }
    }
    for (const x of [0, 1] as const) {
      const a = acc[x]!, ov = halfView(o, x, c), lv = lseHalfView(lse, x, c);
      be.copy(ov, a.o);
      be.copy(lv, a.lse);
    }
  });
  return { o, lse };
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
    // The q side of a launch: all L local tokens, or half 1 (contiguous copies).
    const q = {
      both: { qNope: contiguous(be, qNope), qPe: contiguous(be, qPe), dout: contiguous(be, dout), o: contiguous(be, o), lse: contiguous(be, lse) },
      1: cp > 1 ? { qNope: halfOf(be, qNope, 1, c), qPe: halfOf(be, qPe, 1, c), dout: halfOf(be, dout, 1, c), o: halfOf(be, o, 1, c), lse: lseHalfOf(be, lse, 1, c) } : null,
    };
    // dq of all L local tokens, q_nope's columns then q_pe's, in units of 1/scale; every step
    // adds into the rows its q side covers (mlaAttentionBackwardBlock), converted once at the end.
    // Step 0 (causal, all L queries) sets it; the last step rounds it into out's dq.
    const dqAcc = emptyTensor(be, [B, L, H, Dn + Dr], 'f32');
    let cur = kvPack(be, d, kNope.dtype), next = cp > 1 ? kvPack(be, d, kNope.dtype) : cur;
    let acc = gradPack(be, d), accNext = cp > 1 ? gradPack(be, d) : acc;
    be.fill(acc.buf, 0);
    fillPack(be, cur, kNope, kPe, v);
    // One set of the key side's launch gradients per kv length a step uses.
    const gradsOf = new Map<number, KvHalf>();
    const gradsFor = (Skv: number): KvHalf => {
      let g = gradsOf.get(Skv);
      if (!g) {
        g = { kNope: emptyTensor(be, [B, Skv, H, Dn], kNope.dtype), kPe: emptyTensor(be, [B, Skv, 1, Dr], kPe.dtype), v: emptyTensor(be, [B, Skv, H, Dv], v.dtype) };
        gradsOf.set(Skv, g);
      }
      return g;
    };
    const addInto = (a: Tensor, b: Tensor) => { be.binary('add', a, a, b); b.dispose(); };
    const prev = (r - 1 + cp) % cp, nextRank = (r + 1) % cp;
    for (let j = 0; j < cp; j++) {
      const step = ringStep(cp, r, (r + j) % cp);
      const qs = q[step.q]!, kv = kvOperands(be, cur, step.kv, c);
      const g = gradsFor(step.kv === 'both' ? L : c);
      be.mlaAttentionBackwardBlock(dqAcc, step.q === 'both' ? 0 : c, { dkNope: g.kNope, dkPe: g.kPe, dv: g.v }, qs.dout, qs.qNope, qs.qPe,
        kv.kNope, kv.kPe, kv.v, qs.o, qs.lse, { causal: step.causal, scale },
        { overwrite: j === 0, ...(j === cp - 1 ? { finish: { dqNope: out.dqNope, dqPe: out.dqPe } } : {}) });
      disposeKv(kv);
      for (const { x, part } of sideHalves(step.kv, c)) {
        const a = acc.halves[x];
        addInto(a.kNope, part(g.kNope));
        addInto(a.kPe, part(g.kPe));
        addInto(a.v, part(g.v));
      }
      if (cp === 1) break;
      // k/v and their gradients move to r − 1; after the last step only the gradients move,
      // which brings each accumulator home.
      if (j < cp - 1) {
        comm.sendRecv(cur.buf, prev, next.buf, nextRank);
        [cur, next] = [next, cur];
      }
      comm.sendRecv(acc.buf, prev, accNext.buf, nextRank);
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
