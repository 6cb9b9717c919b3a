// MLA attention on the CPU: the direct definition, row by row, in f32. q = (q_nope | q_pe),
// k = (k_nope | k_pe) with k_pe shared by all heads; the backward recomputes probabilities from
// the saved lse, as the GPU kernels do.
import type { Tensor } from '../../tensor/tensor.js';
import type { AttentionOptions } from '../backend.js';
import { readF32, writeF32 } from './host.js';

interface Dims { B: number; S: number; H: number; Dn: number; Dr: number; Dv: number }

function dimsOf(qNope: Tensor, qPe: Tensor, v: Tensor): Dims {
  const [B, S, H, Dn] = qNope.shape as [number, number, number, number];
  return { B, S, H, Dn, Dr: qPe.shape[3]!, Dv: v.shape[3]! };
}

/** Scaled scores of query row (b,s,h) against keys 0..last, into p (length ≥ last+1). */
function scores(d: Dims, qn: Float32Array, qp: Float32Array, kn: Float32Array, kp: Float32Array,
  b: number, s: number, h: number, last: number, scale: number, p: Float32Array): void {
  const { S, H, Dn, Dr } = d;
  const qnBase = ((b * S + s) * H + h) * Dn, qpBase = ((b * S + s) * H + h) * Dr;
  for (let t = 0; t <= last; t++) {
    const knBase = ((b * S + t) * H + h) * Dn, kpBase = (b * S + t) * Dr;
    let acc = 0;
    for (let i = 0; i < Dn; i++) acc += qn[qnBase + i]! * kn[knBase + i]!;
    for (let i = 0; i < Dr; i++) acc += qp[qpBase + i]! * kp[kpBase + i]!;
    p[t] = acc * scale;
  }
}

export function cpuMlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
  const d = dimsOf(qNope, qPe, v);
  const { B, S, H, Dv } = d;
  const qn = readF32(qNope), qp = readF32(qPe), kn = readF32(kNope), kp = readF32(kPe), vv = readF32(v);
  const out = new Float32Array(B * S * H * Dv);
  const lseOut = new Float32Array(B * H * S);
  const p = new Float32Array(S);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let s = 0; s < S; s++) {
    const last = opts.causal ? s : S - 1;
    scores(d, qn, qp, kn, kp, b, s, h, last, opts.scale, p);
    let m = -Infinity;
    for (let t = 0; t <= last; t++) m = Math.max(m, p[t]!);
    let sum = 0;
    for (let t = 0; t <= last; t++) { const e = Math.exp(p[t]! - m); p[t] = e; sum += e; }
    const oBase = ((b * S + s) * H + h) * Dv;
    for (let t = 0; t <= last; t++) {
      const w = p[t]! / sum, vBase = ((b * S + t) * H + h) * Dv;
      for (let i = 0; i < Dv; i++) out[oBase + i] += w * vv[vBase + i]!;
    }
    lseOut[(b * H + h) * S + s] = m + Math.log(sum);
  }
  writeF32(o, out);
  writeF32(lse, lseOut);
}

export function cpuMlaAttentionBackward(
  grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
  dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor,
  opts: AttentionOptions,
): void {
  const d = dimsOf(qNope, qPe, v);
  const { B, S, H, Dn, Dr, Dv } = d;
  const qn = readF32(qNope), qp = readF32(qPe), kn = readF32(kNope), kp = readF32(kPe), vv = readF32(v);
  const oo = readF32(o), dO = readF32(dout), L = readF32(lse);
  const dqn = new Float32Array(qn.length), dqp = new Float32Array(qp.length);
  const dkn = new Float32Array(kn.length), dkp = new Float32Array(kp.length), dvv = new Float32Array(vv.length);
  const p = new Float32Array(S);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let s = 0; s < S; s++) {
    const last = opts.causal ? s : S - 1;
    scores(d, qn, qp, kn, kp, b, s, h, last, opts.scale, p);
    const l = L[(b * H + h) * S + s]!;
    const oBase = ((b * S + s) * H + h) * Dv;
    let delta = 0; // D = Σ dO·O
    for (let i = 0; i < Dv; i++) delta += dO[oBase + i]! * oo[oBase + i]!;
    const qnBase = ((b * S + s) * H + h) * Dn, qpBase = ((b * S + s) * H + h) * Dr;
    for (let t = 0; t <= last; t++) {
      const prob = Math.exp(p[t]! - l);
      const vBase = ((b * S + t) * H + h) * Dv;
      let dp = 0;
      for (let i = 0; i < Dv; i++) { dp += dO[oBase + i]! * vv[vBase + i]!; dvv[vBase + i] += prob * dO[oBase + i]!; }
      const ds = prob * (dp - delta) * opts.scale;
      const knBase = ((b * S + t) * H + h) * Dn, kpBase = (b * S + t) * Dr;
      for (let i = 0; i < Dn; i++) { dqn[qnBase + i] += ds * kn[knBase + i]!; dkn[knBase + i] += ds * qn[qnBase + i]!; }
      for (let i = 0; i < Dr; i++) { dqp[qpBase + i] += ds * kp[kpBase + i]!; dkp[kpBase + i] += ds * qp[qpBase + i]!; }
    }
  }
  writeF32(grads.dqNope, dqn); writeF32(grads.dqPe, dqp); writeF32(grads.dkNope, dkn);
  writeF32(grads.dkPe, dkp); writeF32(grads.dv, dvv);
}
