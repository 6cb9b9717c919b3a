// MLA attention on the CPU: the direct definition, row by row, in f32. For each (batch, head)
// the pieces are first gathered into dense rows q = (q_nope | q_pe) and k = (k_nope | k_pe), with
// k_pe shared by all heads, so the inner loops run over contiguous memory; the backward
// recomputes probabilities from the saved lse, as the GPU kernels do, and sums dk_pe over heads.
// q has Sq positions and k/v Skv (a non-causal block of ring attention has Sq ≠ Skv); the causal
// mask compares positions, so it needs Sq = Skv (Backend.mlaAttention).
import type { Tensor } from '../../tensor/tensor.js';
import type { AttentionOptions } from '../backend.js';
import { denseView, readF32, writeF32 } from './host.js';

interface Dims { B: number; Sq: number; Skv: number; H: number; Dn: number; Dr: number; Dv: number }

function dimsOf(qNope: Tensor, qPe: Tensor, v: Tensor, opts: AttentionOptions): Dims {
  const [B, Sq, H, Dn] = qNope.shape as [number, number, number, number];
  const Skv = v.shape[1]!;
  if (opts.causal && Sq !== Skv) {
    throw new Error(`mlaAttention: a causal mask needs as many queries as keys, got q ${Sq} × kv ${Skv} positions; pass causal: false for a block of other positions`);
  }
  return { B, Sq, Skv, H, Dn, Dr: qPe.shape[3]!, Dv: v.shape[3]! };
}

/** Dense [S, Dn+Dr] rows of (nope | rope) for one (b, h) of S positions; rope rows come from a [B,S,1,Dr] or [B,S,H,Dr] array. */
function gatherRows(d: Dims, S: number, nope: Float32Array, rope: Float32Array, ropeHeads: number, b: number, h: number, out: Float32Array): void {
  const { H, Dn, Dr } = d, Dq = Dn + Dr;
  for (let s = 0; s < S; s++) {
    const n = ((b * S + s) * H + h) * Dn, r = ((b * S + s) * ropeHeads + (ropeHeads === 1 ? 0 : h)) * Dr;
    for (let i = 0; i < Dn; i++) out[s * Dq + i] = nope[n + i]!;
    for (let i = 0; i < Dr; i++) out[s * Dq + Dn + i] = rope[r + i]!;
  }
}

function gatherHead(d: Dims, S: number, x: Float32Array, width: number, b: number, h: number, out: Float32Array): void {
  const { H } = d;
  for (let s = 0; s < S; s++) {
    const at = ((b * S + s) * H + h) * width;
    for (let i = 0; i < width; i++) out[s * width + i] = x[at + i]!;
  }
}

/** p[t] = scale·q_s·k_t for t ≤ last. */
function scores(q: Float32Array, k: Float32Array, s: number, last: number, Dq: number, scale: number, p: Float32Array): void {
  const qs = s * Dq;
  for (let t = 0; t <= last; t++) {
    const kt = t * Dq;
    let acc = 0;
    for (let i = 0; i < Dq; i++) acc += q[qs + i]! * k[kt + i]!;
    p[t] = acc * scale;
  }
}

export function cpuMlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
  const d = dimsOf(qNope, qPe, v, opts);
  const { B, Sq, Skv, H, Dn, Dr, Dv } = d, Dq = Dn + Dr;
  const qn = readF32(qNope), qp = readF32(qPe), kn = readF32(kNope), kp = readF32(kPe), vv = readF32(v);
  const out = new Float32Array(B * Sq * H * Dv), lseOut = new Float32Array(B * H * Sq);
  const q = new Float32Array(Sq * Dq), k = new Float32Array(Skv * Dq), vh = new Float32Array(Skv * Dv), p = new Float32Array(Skv);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) {
    gatherRows(d, Sq, qn, qp, H, b, h, q);
    gatherRows(d, Skv, kn, kp, 1, b, h, k);
    gatherHead(d, Skv, vv, Dv, b, h, vh);
    for (let s = 0; s < Sq; s++) {
      const last = opts.causal ? s : Skv - 1;
      scores(q, k, s, last, Dq, opts.scale, p);
      let m = -Infinity;
      for (let t = 0; t <= last; t++) m = Math.max(m, p[t]!);
      let sum = 0;
      for (let t = 0; t <= last; t++) { const e = Math.exp(p[t]! - m); p[t] = e; sum += e; }
      const oBase = ((b * Sq + s) * H + h) * Dv;
      for (let t = 0; t <= last; t++) {
        const w = p[t]! / sum, vt = t * Dv;
        for (let i = 0; i < Dv; i++) out[oBase + i] += w * vh[vt + i]!;
      }
      lseOut[(b * H + h) * Sq + s] = m + Math.log(sum);
    }
  }
  writeF32(o, out);
  writeF32(lse, lseOut);
}

export function cpuMlaAttentionBackward(
  grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
  dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor,
  opts: AttentionOptions,
): void {
  const d = dimsOf(qNope, qPe, v, opts);
  const { B, Sq, Skv, H, Dn, Dr, Dv } = d, Dq = Dn + Dr;
  const qn = readF32(qNope), qp = readF32(qPe), kn = readF32(kNope), kp = readF32(kPe), vv = readF32(v);
  const oo = readF32(o), dO = readF32(dout), L = readF32(lse);
  const dqn = new Float32Array(qn.length), dqp = new Float32Array(qp.length);
  const dkn = new Float32Array(kn.length), dkp = new Float32Array(kp.length), dvv = new Float32Array(vv.length);
  const q = new Float32Array(Sq * Dq), k = new Float32Array(Skv * Dq), vh = new Float32Array(Skv * Dv), g = new Float32Array(Sq * Dv);
  const dq = new Float32Array(Sq * Dq), dk = new Float32Array(Skv * Dq), dvh = new Float32Array(Skv * Dv), p = new Float32Array(Skv);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) {
    gatherRows(d, Sq, qn, qp, H, b, h, q);
    gatherRows(d, Skv, kn, kp, 1, b, h, k);
    gatherHead(d, Skv, vv, Dv, b, h, vh);
    gatherHead(d, Sq, dO, Dv, b, h, g);
    dq.fill(0); dk.fill(0); dvh.fill(0);
    for (let s = 0; s < Sq; s++) {
      const last = opts.causal ? s : Skv - 1;
      scores(q, k, s, last, Dq, opts.scale, p);
      const l = L[(b * H + h) * Sq + s]!, oBase = ((b * Sq + s) * H + h) * Dv, gs = s * Dv, qs = s * Dq;
      let delta = 0; // D = Σ dO·O
      for (let i = 0; i < Dv; i++) delta += dO[oBase + i]! * oo[oBase + i]!;
      for (let t = 0; t <= last; t++) {
        const prob = Math.exp(p[t]! - l), vt = t * Dv, kt = t * Dq;
        let dp = 0;
        for (let i = 0; i < Dv; i++) { dp += g[gs + i]! * vh[vt + i]!; dvh[vt + i] += prob * g[gs + i]!; }
        const ds = prob * (dp - delta) * opts.scale;
        for (let i = 0; i < Dq; i++) { dq[qs + i] += ds * k[kt + i]!; dk[kt + i] += ds * q[qs + i]!; }
      }
    }
    for (let s = 0; s < Sq; s++) {
      const row = (b * Sq + s) * H + h;
      for (let i = 0; i < Dn; i++) dqn[row * Dn + i] = dq[s * Dq + i]!;
      for (let i = 0; i < Dr; i++) dqp[row * Dr + i] = dq[s * Dq + Dn + i]!;
    }
    for (let s = 0; s < Skv; s++) {
      const row = (b * Skv + s) * H + h, pe = (b * Skv + s) * Dr;
      for (let i = 0; i < Dn; i++) dkn[row * Dn + i] = dk[s * Dq + i]!;
      for (let i = 0; i < Dr; i++) dkp[pe + i] += dk[s * Dq + Dn + i]!;
      for (let i = 0; i < Dv; i++) dvv[row * Dv + i] = dvh[s * Dv + i]!;
    }
  }
  writeF32(grads.dqNope, dqn); writeF32(grads.dqPe, dqp); writeF32(grads.dkNope, dkn);
  writeF32(grads.dkPe, dkp); writeF32(grads.dv, dvv);
}

/** Backend.attentionMerge on the CPU: one pass per (b, t, h) row; the f64 weights as the CUDA kernel's f32 ones. */
export function cpuAttentionMerge(accO: Tensor, accLse: Tensor, o: Tensor, lse: Tensor): void {
  const [B, c, H, Dv] = accO.shape as [number, number, number, number];
  const A = denseView(accO) as Float32Array, AL = denseView(accLse) as Float32Array;
  const O = readF32(o), L = readF32(lse);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < c; t++) {
    const li = (b * H + h) * c + t;
    const [wa, wb, next] = mergeWeights(AL[li]!, L[li]!);
    AL[li] = next;
    const row = ((b * c + t) * H + h) * Dv;
    for (let d = 0; d < Dv; d++) A[row + d] = A[row + d]! * wa + O[row + d]! * wb;
  }
}

/** The two weights and the merged log-sum-exp of partial softmaxes with log-sum-exps la and lb; a side with −∞ (no keys) weighs 0. */
export function mergeWeights(la: number, lb: number): [number, number, number] {
  if (la === -Infinity) return [0, 1, lb];
  if (lb === -Infinity) return [1, 0, la];
  const next = Math.max(la, lb) + Math.log1p(Math.exp(-Math.abs(la - lb)));
  return [Math.exp(la - next), Math.exp(lb - next), next];
}
