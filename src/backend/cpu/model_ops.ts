// The model-specific kernels of the CPU backend (norms, rotary, activations, embedding, loss,
// routing, expert dispatch), written as the direct definitions in f32.
import type { Tensor } from '../../tensor/tensor.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../../tensor/dtype.js';
import { readF32, readI32, writeF32, denseView } from './host.js';

export function rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void {
  const D = x.shape[x.rank - 1]!, R = x.size / D;
  const X = readF32(x), W = readF32(w), Y = new Float32Array(X.length), r = new Float32Array(R);
  for (let i = 0; i < R; i++) {
    let ss = 0;
    for (let j = 0; j < D; j++) ss += X[i * D + j]! ** 2;
    const inv = 1 / Math.sqrt(ss / D + eps);
    r[i] = inv;
    for (let j = 0; j < D; j++) Y[i * D + j] = X[i * D + j]! * inv * W[j]!;
  }
  writeF32(y, Y); writeF32(rstd, r);
}

export function rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void {
  const D = x.shape[x.rank - 1]!, R = x.size / D;
  const X = readF32(x), W = readF32(w), DY = readF32(dy), r = readF32(rstd);
  const DX = new Float32Array(X.length), DW = readF32(dw);
  for (let i = 0; i < R; i++) {
    const inv = r[i]!;
    let dot = 0; // Σ_j dy·w·x
    for (let j = 0; j < D; j++) dot += DY[i * D + j]! * W[j]! * X[i * D + j]!;
    const c = dot * inv * inv * inv / D;
    for (let j = 0; j < D; j++) {
      const xj = X[i * D + j]!, g = DY[i * D + j]!;
      DX[i * D + j] = g * W[j]! * inv - xj * c;
      DW[j] += g * xj * inv;
    }
  }
  writeF32(dx, DX); writeF32(dw, DW);
}

/** Shared loop of rope and its adjoint; sign −1 applies the inverse rotation. */
function ropeApply(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor, forward: boolean): void {
  const [B, S, H, D] = x.shape as [number, number, number, number];
  const half = D / 2;
  const X = readF32(x), C = readF32(cos), Sn = readF32(sin), O = new Float32Array(X.length);
  for (let b = 0; b < B; b++) for (let s = 0; s < S; s++) for (let h = 0; h < H; h++) {
    const base = ((b * S + s) * H + h) * D;
    for (let j = 0; j < half; j++) {
      const c = C[s * half + j]!, sn = Sn[s * half + j]!;
      if (forward) {
        const xe = X[base + 2 * j]!, xo = X[base + 2 * j + 1]!;
        O[base + j] = xe * c - xo * sn;
        O[base + j + half] = xo * c + xe * sn;
      } else {
        const g1 = X[base + j]!, g2 = X[base + j + half]!;
        O[base + 2 * j] = g1 * c + g2 * sn;
        O[base + 2 * j + 1] = -g1 * sn + g2 * c;
      }
    }
  }
  writeF32(out, O);
}

export const rope = (out: Tensor, x: Tensor, cos: Tensor, sin: Tensor) => ropeApply(out, x, cos, sin, true);
export const ropeBackward = (dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor) => ropeApply(dx, dout, cos, sin, false);

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

export function swiglu(out: Tensor, gate: Tensor, up: Tensor): void {
  const G = readF32(gate), U = readF32(up), O = new Float32Array(G.length);
  for (let i = 0; i < G.length; i++) O[i] = G[i]! * sigmoid(G[i]!) * U[i]!;
  writeF32(out, O);
}

export function swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void {
  const G = readF32(gate), U = readF32(up), DO = readF32(dout);
  const DG = new Float32Array(G.length), DU = new Float32Array(G.length);
  for (let i = 0; i < G.length; i++) {
    const g = G[i]!, sg = sigmoid(g);
    DU[i] = DO[i]! * g * sg;
    DG[i] = DO[i]! * U[i]! * sg * (1 + g * (1 - sg));
  }
  writeF32(dgate, DG); writeF32(dup, DU);
}

export function embedding(out: Tensor, ids: Tensor, weight: Tensor): void {
  const [V, D] = weight.shape as [number, number];
  const I = readI32(ids), W = readF32(weight), O = new Float32Array(I.length * D);
  for (let n = 0; n < I.length; n++) {
    const id = I[n]!;
    if (id < 0 || id >= V) throw new Error(`token id ${id} is outside the vocabulary (size ${V}): check that the data was tokenized with this model's tokenizer`);
    O.set(W.subarray(id * D, (id + 1) * D), n * D);
  }
  writeF32(out, O);
}

/**
 * dweight += dout rows scattered by ids, added in f32 in the order of n. A bf16 dweight (the lean
 * recipe's) gets each named row's f32 sum, from its stored value, rounded once.
 */
export function embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor): void {
  const D = dweight.shape[1]!;
  const I = readI32(ids), G = readF32(dout);
  const dense = denseView(dweight);
  if (dense instanceof Float32Array) {
    for (let n = 0; n < I.length; n++) {
      const base = I[n]! * D;
      for (let j = 0; j < D; j++) dense[base + j] += G[n * D + j]!;
    }
    return;
  }
  if (!(dense instanceof Uint16Array)) throw new Error(`internal: embeddingBackward into ${dweight.dtype}`);
  // Each named row widened once, summed in f32, rounded back once.
  const rows = new Map<number, Float32Array>();
  for (let n = 0; n < I.length; n++) {
    const id = I[n]!;
    let acc = rows.get(id);
    if (!acc) { acc = bf16ArrayToF32(dense.subarray(id * D, (id + 1) * D)); rows.set(id, acc); }
    for (let j = 0; j < D; j++) acc[j] += G[n * D + j]!;
  }
  for (const [id, acc] of rows) f32ArrayToBf16(acc, dense.subarray(id * D, (id + 1) * D));
}

export function crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void {
  const V = logits.shape[logits.rank - 1]!, N = logits.size / V;
  const X = readF32(logits), Y = readI32(labels), L = new Float32Array(N), Z = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, X[n * V + j]!);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(X[n * V + j]! - m);
    const z = m + Math.log(s);
    Z[n] = z;
    const y = Y[n]!;
    if (y >= V) throw new Error(`label ${y} is outside the vocabulary (size ${V}): check that the data was tokenized with this model's tokenizer`);
    L[n] = y < 0 ? 0 : z - X[n * V + y]!;
  }
  writeF32(loss, L); writeF32(lse, Z);
}

export function crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
  crossEntropyGrad(dlogits, logits, labels, lse, readF32(dloss)[0]! * scale);
}

/** crossEntropy, then its gradient with dloss = 1 into dlogits (which may be logits: both are read before it is written). */
export function crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void {
  crossEntropy(loss, lse, logits, labels);
  crossEntropyGrad(dlogits, logits, labels, lse, scale);  // dloss = 1: the factor is scale itself
}

/** dlogits = g·(softmax(logits) − onehot(labels)) by rows, 0 for ignored rows. */
function crossEntropyGrad(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, g: number): void {
  const V = logits.shape[logits.rank - 1]!, N = logits.size / V;
  const X = readF32(logits), Y = readI32(labels), Z = readF32(lse);
  const DX = new Float32Array(X.length);
  for (let n = 0; n < N; n++) {
    const y = Y[n]!;
    if (y < 0) continue;
    for (let j = 0; j < V; j++) DX[n * V + j] = g * Math.exp(X[n * V + j]! - Z[n]!);
    DX[n * V + y] -= g;
  }
  writeF32(dlogits, DX);
}

export function softmax(out: Tensor, x: Tensor): void {
  const C = x.shape[x.rank - 1]!, R = x.size / C;
  const X = readF32(x), O = new Float32Array(X.length);
  for (let r = 0; r < R; r++) {
    let m = -Infinity;
    for (let j = 0; j < C; j++) m = Math.max(m, X[r * C + j]!);
    let s = 0;
    for (let j = 0; j < C; j++) { const e = Math.exp(X[r * C + j]! - m); O[r * C + j] = e; s += e; }
    for (let j = 0; j < C; j++) O[r * C + j]! /= s;
  }
  writeF32(out, O);
}

export function softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void {
  const C = y.shape[y.rank - 1]!, R = y.size / C;
  const DY = readF32(dy), Y = readF32(y), DX = new Float32Array(Y.length);
  for (let r = 0; r < R; r++) {
    let dot = 0;
    for (let j = 0; j < C; j++) dot += DY[r * C + j]! * Y[r * C + j]!;
    for (let j = 0; j < C; j++) DX[r * C + j] = Y[r * C + j]! * (DY[r * C + j]! - dot);
  }
  writeF32(dx, DX);
}

export function topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void {
  const E = x.shape[x.rank - 1]!, N = x.size / E;
  const X = readF32(x), V = new Float32Array(N * k), I = denseView(indices) as Int32Array;
  const taken = new Uint8Array(E);
  for (let n = 0; n < N; n++) {
    taken.fill(0);
    for (let j = 0; j < k; j++) {
      let best = -1, bv = -Infinity;
      for (let e = 0; e < E; e++) {
        const val = X[n * E + e]!;
        if (!taken[e] && (best < 0 || val > bv)) { best = e; bv = val; }
      }
      taken[best] = 1;
      V[n * k + j] = bv;
      I[n * k + j] = best;
    }
  }
  writeF32(values, V);
}

export function bincount(counts: Tensor, idx: Tensor): void {
  const G = idx.rank === 1 ? 1 : idx.shape[0]!, M = idx.size / G, E = counts.size / G;
  const I = readI32(idx), C = denseView(counts) as Int32Array;
  C.fill(0);
  for (let g = 0; g < G; g++) for (let m = 0; m < M; m++) C[g * E + I[g * M + m]!]!++;
}

export function expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void {
  const X = readI32(expertOfSlot), O = denseView(order) as Int32Array, F = denseView(offsets) as Int32Array;
  F.fill(0);
  for (let m = 0; m < X.length; m++) F[X[m]! + 1]!++;
  for (let e = 0; e < numExperts; e++) F[e + 1] += F[e]!;
  const next = F.slice(0, numExperts);
  for (let m = 0; m < X.length; m++) O[next[X[m]!]!++] = m;
}

export function gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void {
  const D = x.shape[x.rank - 1]!;
  const X = readF32(x), I = readI32(idx), Wt = weights ? readF32(weights) : null, O = new Float32Array(I.length * D);
  for (let m = 0; m < I.length; m++) {
    const w = Wt ? Wt[m]! : 1, src = I[m]! * D;
    for (let j = 0; j < D; j++) O[m * D + j] = w * X[src + j]!;
  }
  writeF32(out, O);
}

export function scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void {
  const D = src.shape[src.rank - 1]!;
  const S = readF32(src), I = readI32(idx), Wt = weights ? readF32(weights) : null, O = readF32(out);
  for (let m = 0; m < I.length; m++) {
    const w = Wt ? Wt[m]! : 1, dst = I[m]! * D;
    for (let j = 0; j < D; j++) O[dst + j] += w * S[m * D + j]!;
  }
  writeF32(out, O);
}

export function expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void {
  const O = readI32(order), R = denseView(rowOfSlot) as Int32Array;
  R.fill(-1);
  for (let m = first; m < first + count; m++) R[O[m]!] = m - first;
}

// A token's rows are added in increasing row index, each term into an f32 accumulator
// (Float32Array) as scatterAddRows adds them, so the sum is bit for bit the scatter-add's.
export function sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void {
  const D = rows.shape[rows.rank - 1]!, N = D === 0 ? 0 : out.size / D, M = D === 0 ? 0 : rows.size / D;
  const X = readF32(rows), I = readI32(rowOfSlot), Wt = weights ? readF32(weights) : null, O = new Float32Array(N * D);
  const k = N === 0 ? 0 : I.length / N, picked: number[] = [];
  for (let n = 0; n < N; n++) {
    picked.length = 0;
    for (let j = 0; j < k; j++) { const r = I[n * k + j]!; if (r >= 0 && r < M) picked.push(r); }
    picked.sort((a, b) => a - b);
    for (const r of picked) {
      const w = Wt ? Wt[r]! : 1;
      for (let d = 0; d < D; d++) O[n * D + d] += w * X[r * D + d]!;
    }
  }
  writeF32(out, O);
}

// dweights: each product rounded to f32, summed in f64 and rounded once (the arithmetic of the
// gather, f32 multiply and row sum it stands for); drows as gatherRows computes it.
export function sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void {
  const D = dout.shape[dout.rank - 1]!, T = readI32(tokenOfRow), M = T.length;
  const G = readF32(dout), Wt = weights ? readF32(weights) : null;
  if (drows) {
    const DR = new Float32Array(M * D);
    for (let m = 0; m < M; m++) {
      const w = Wt ? Wt[m]! : 1, src = T[m]! * D;
      for (let d = 0; d < D; d++) DR[m * D + d] = w * G[src + d]!;
    }
    writeF32(drows, DR);
  }
  if (dweights) {
    if (!rows) throw new Error('internal: sumSlotRowsBackward needs rows for dweights');
    const Y = readF32(rows), DW = new Float32Array(M);
    for (let m = 0; m < M; m++) {
      const src = T[m]! * D;
      let s = 0;
      for (let d = 0; d < D; d++) s += Math.fround(G[src + d]! * Y[m * D + d]!);
      DW[m] = s;
    }
    writeF32(dweights, DW);
  }
}
