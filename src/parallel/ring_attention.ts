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
// Forward: cp steps; at step j the rank holds the k/v of rank (r − j) mod cp and computes the
// blocks ringBlocks() names (causal-diagonal or full, each through Backend.mlaAttention with its
// lse), merging each into its q half's f32 output by log-sum-exp (ringMerge), then passes the
// k/v on to r + 1. Backward: the FlashAttention identity per block with the MERGED o and lse;
// k/v travel the other way (to r − 1) together with an f32 accumulator of their dk_nope, dk_pe
// (summed over heads) and dv, which arrives back at its owner after the last step; dq stays local.
//
// Shape legend: B batch, L = S/cp local tokens (two chunks of c = L/2), H heads, Dn/Dr/Dv widths.
import { backendOf, type AttentionOptions, type Backend } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { tidy } from '../tensor/scope.js';
import { contiguousStrides, emptyTensor, type Shape, type Tensor } from '../tensor/tensor.js';
import type { DType } from '../tensor/dtype.js';
import type { Communicator } from './communicator.js';
import { ringBlocks } from './zigzag.js';

/** Options of ringMlaAttention: the softmax scale (attention over the whole sequence is causal). */
export interface RingAttentionOptions { scale: number }

interface Dims { B: number; L: number; c: number; H: number; Dn: number; Dr: number; Dv: number }

/** k_nope [B,c,H,Dn], k_pe [B,c,1,Dr] and v [B,c,H,Dv] of one local half. */
interface KvHalf { kNope: Tensor; kPe: Tensor; v: Tensor }

/** Both halves' k/v as contiguous views of one flat buffer (one message per ring step). */
interface KvPack { buf: Tensor; halves: [KvHalf, KvHalf] }

function kvPack(be: Backend, d: Dims, dtype: DType): KvPack {
  const shapes: Shape[] = [[d.B, d.c, d.H, d.Dn], [d.B, d.c, 1, d.Dr], [d.B, d.c, d.H, d.Dv]];
  const per = shapes.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  const buf = emptyTensor(be, [2 * per], dtype);
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

/** View of half x of an lse [B, H, L] as [B, H, c]. */
function lseHalfView(lse: Tensor, x: 0 | 1, c: number): Tensor {
  return lse.view([lse.shape[0]!, lse.shape[1]!, c], lse.strides, lse.offset + x * c);
}

/** Copies the local k/v pieces [B, L, …] into the halves of a pack. */
function fillPack(be: Backend, p: KvPack, kNope: Tensor, kPe: Tensor, v: Tensor, c: number): void {
  for (const x of [0, 1] as const) {
    const h = p.halves[x];
    for (const [dst, src] of [[h.kNope, kNope], [h.kPe, kPe], [h.v, v]] as const) {
      const view = halfView(src, x, c);
      be.copy(dst, view);
      view.dispose();
    }
  }
}

function dimsOf(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, cp: number): Dims {
  const [B, L, H, Dn] = qNope.shape as [number, number, number, number];
  const Dr = qPe.shape[3]!, Dv = v.shape[3]!;
  const want: [Tensor, Shape, string][] = [[qPe, [B, L, H, Dr], 'q_pe'], [kNope, [B, L, H, Dn], 'k_nope'], [kPe, [B, L, 1, Dr], 'k_pe'], [v, [B, L, H, Dv], 'v']];
  for (const [t, s, name] of want) if (t.shape.join() !== s.join()) throw new Error(`internal: ring attention ${name} is [${t.shape}], expected [${s}]`);
  if (L % 2 !== 0) throw new Error(`internal: ring attention needs an even local length (two zigzag chunks), got ${L} tokens on each of ${cp} ranks`);
  return { B, L, c: L / 2, H, Dn, Dr, Dv };
}

/**
 * Merges a block's (o [B,c,H,Dv], lse [B,H,c]) into the running f32 (acc.o, acc.lse), in place:
 * lse' = log(e^lse_acc + e^lse) = lse_acc + max(δ, 0) + log(1 + e^−|δ|) with δ = lse − lse_acc
 * (no exp of a positive number, so nothing overflows), then o' = o_acc·e^(lse_acc−lse') +
 * o·e^(lse−lse'), both weights ≤ 1.
 */
export function ringMerge(be: Backend, acc: { o: Tensor; lse: Tensor }, o: Tensor, lse: Tensor): void {
  tidy(() => {
    const [B, c, H, Dv] = o.shape as [number, number, number, number];
    const tmp = () => emptyTensor(be, lse.shape, 'f32');
    const d = tmp(), ad = tmp(), relu = tmp(), soft = tmp(), next = tmp(), wOld = tmp(), wNew = tmp();
    be.binary('sub', d, lse, acc.lse);
    be.unary('square', ad, d);
    be.unary('sqrt', ad, ad); // |δ|
    be.binary('add', relu, d, ad);
    be.unary('scale', relu, relu, 0.5); // max(δ, 0)
    be.unary('neg', soft, ad);
    be.unary('exp', soft, soft);
    be.unary('addScalar', soft, soft, 1);
    be.unary('log', soft, soft); // log(1 + e^−|δ|)
    be.binary('add', next, acc.lse, relu);
    be.binary('add', next, next, soft);
    be.binary('sub', wOld, acc.lse, next);
    be.unary('exp', wOld, wOld);
    be.binary('sub', wNew, lse, next);
    be.unary('exp', wNew, wNew);
    // A weight [B,H,c] seen as [B,c,H,Dv]: broadcast over Dv.
    const asO = (w: Tensor) => w.view([B, c, H, Dv], [H * c, 1, c, 0], w.offset);
    const part = emptyTensor(be, o.shape, 'f32');
    be.binary('mul', acc.o, acc.o, asO(wOld));
    be.binary('mul', part, o, asO(wNew));
    be.binary('add', acc.o, acc.o, part);
    be.copy(acc.lse, next);
  });
}

/** The forward ring: o [B,L,H,Dv] in v's dtype and the merged lse [B,H,L] f32. */
function ringForward(be: Backend, comm: Communicator, d: Dims, q: { nope: Tensor; pe: Tensor }[], kNope: Tensor, kPe: Tensor, v: Tensor, scale: number): { o: Tensor; lse: Tensor } {
  const { B, L, c, H, Dv } = d, cp = comm.size, r = comm.rank;
  const o = emptyTensor(be, [B, L, H, Dv], v.dtype), lse = emptyTensor(be, [B, H, L], 'f32');
  tidy(() => {
    let cur = kvPack(be, d, kNope.dtype), next = kvPack(be, d, kNope.dtype);
    fillPack(be, cur, kNope, kPe, v, c);
    const acc: ({ o: Tensor; lse: Tensor } | null)[] = [null, null];
    for (let j = 0; j < cp; j++) {
      const source = (r - j + cp) % cp;
      for (const blk of ringBlocks(cp, r, source)) {
        const kv = cur.halves[blk.k], qh = q[blk.q]!;
        const bo = emptyTensor(be, [B, c, H, Dv], v.dtype), bl = emptyTensor(be, [B, H, c], 'f32');
        be.mlaAttention(bo, bl, qh.nope, qh.pe, kv.kNope, kv.kPe, kv.v, { causal: blk.kind === 'diagonal', scale });
        const a = acc[blk.q];
        if (a) {
          ringMerge(be, a, bo, bl);
        } else {
          const first = { o: emptyTensor(be, bo.shape, 'f32'), lse: bl };
          be.copy(first.o, bo);
          acc[blk.q] = first;
        }
        bo.dispose();
      }
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

/** f32 accumulators of dk_nope, dk_pe, dv for both halves of one rank's k/v, in one buffer. */
function gradPack(be: Backend, d: Dims): KvPack {
  const p = kvPack(be, d, 'f32');
  be.fill(p.buf, 0);
  return p;
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
    const halves = ([0, 1] as const).map((x) => {
      const h = {
        qNope: halfOf(be, qNope, x, c), qPe: halfOf(be, qPe, x, c), dout: halfOf(be, dout, x, c), o: halfOf(be, o, x, c),
        lse: emptyTensor(be, [B, H, c], 'f32'),
        dqNope: emptyTensor(be, [B, c, H, Dn], 'f32'), dqPe: emptyTensor(be, [B, c, H, Dr], 'f32'),
      };
      be.copy(h.lse, lseHalfView(lse, x, c));
      be.fill(h.dqNope, 0);
      be.fill(h.dqPe, 0);
      return h;
    });
    let cur = kvPack(be, d, kNope.dtype), next = kvPack(be, d, kNope.dtype);
    let acc = gradPack(be, d), accNext = kvPack(be, d, 'f32');
    fillPack(be, cur, kNope, kPe, v, c);
    const g = {
      dqNope: emptyTensor(be, [B, c, H, Dn], qNope.dtype), dqPe: emptyTensor(be, [B, c, H, Dr], qPe.dtype),
      dkNope: emptyTensor(be, [B, c, H, Dn], kNope.dtype), dkPe: emptyTensor(be, [B, c, 1, Dr], kPe.dtype), dv: emptyTensor(be, [B, c, H, Dv], v.dtype),
    };
    const addInto = (a: Tensor, b: Tensor) => be.binary('add', a, a, b);
    const prev = (r - 1 + cp) % cp, nextRank = (r + 1) % cp;
    for (let j = 0; j < cp; j++) {
      const source = (r + j) % cp;
      for (const blk of ringBlocks(cp, r, source)) {
        const kv = cur.halves[blk.k], qh = halves[blk.q]!, dk = acc.halves[blk.k];
        be.mlaAttentionBackward(g, qh.dout, qh.qNope, qh.qPe, kv.kNope, kv.kPe, kv.v, qh.o, qh.lse, { causal: blk.kind === 'diagonal', scale });
        addInto(qh.dqNope, g.dqNope);
        addInto(qh.dqPe, g.dqPe);
        addInto(dk.kNope, g.dkNope);
        addInto(dk.kPe, g.dkPe);
        addInto(dk.v, g.dv);
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
      const h = halves[x]!, a = acc.halves[x];
      const pairs: [Tensor, Tensor][] = [[out.dqNope, h.dqNope], [out.dqPe, h.dqPe], [out.dkNope, a.kNope], [out.dkPe, a.kPe], [out.dv, a.v]];
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
 * the same function as mlaAttention (as two chunks).
 */
export function ringMlaAttention(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: RingAttentionOptions, comm: Communicator): { o: Tensor; lse: Tensor } {
  const be = backendOf(qNope);
  const d = dimsOf(qNope, qPe, kNope, kPe, v, comm.size);
  const q = tidy(() => ([0, 1] as const).map((x) => ({ nope: halfOf(be, qNope, x, d.c), pe: halfOf(be, qPe, x, d.c) })));
  const { o, lse } = ringForward(be, comm, d, q, kNope, kPe, v, opts.scale);
  for (const h of q) { h.nope.dispose(); h.pe.dispose(); }
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
