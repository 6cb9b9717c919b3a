// The CPU backend's MLA attention (the oracle for the GPU kernels) against a direct float64
// reference written here: q = cat(q_nope, q_pe), k = cat(k_nope, k_pe broadcast over heads),
// o = softmax(q·kᵀ·scale + causal mask)·v, lse = log Σ exp(scores); and its backward against the
// float64 analytic gradients, with dk_pe the sum over heads of the rope part of each head's dk.
// q has Sq positions and k/v Skv: equal for the causal cases, different for the unmasked blocks
// ring attention launches (q 2c × kv c, q c × kv 2c).
//
// Tolerance: the backend computes in f32 from f32 inputs; with O(1) inputs and at most 33 keys,
// its accumulated rounding is a few 1e-7 relative, so relative errors (‖got − ref‖/‖ref‖) must
// stay under 1e-5 and no element may be off by more than 1e-4. Outputs are filled with NaN
// before each run, so an element the backend forgets to write fails the test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { fromHost, full, toHostF32 } from '../src/ops/create.js';
import { mlaAttention } from '../src/ops/mla_attention.js';
import { tidy } from '../src/tensor/scope.js';
import { randomValues } from './helpers/grad_check.js';

const be = new CpuBackend();

interface Dims { B: number; Sq: number; Skv: number; H: number; Dn: number; Dr: number; Dv: number }
interface Inputs { qn: Float32Array; qp: Float32Array; kn: Float32Array; kp: Float32Array; v: Float32Array }

/** float64 reference forward and backward over the full concatenated q and k. */
function reference(d: Dims, x: Inputs, dout: Float32Array, causal: boolean, scale: number) {
  const { B, Sq, Skv, H, Dn, Dr, Dv } = d, Dq = Dn + Dr;
  // Concatenate explicitly, k_pe copied to every head, as the definition reads.
  const q = new Float64Array(B * Sq * H * Dq), k = new Float64Array(B * Skv * H * Dq);
  for (let b = 0; b < B; b++) for (let s = 0; s < Sq; s++) for (let h = 0; h < H; h++) {
    const r = (b * Sq + s) * H + h;
    for (let i = 0; i < Dn; i++) q[r * Dq + i] = x.qn[r * Dn + i]!;
    for (let i = 0; i < Dr; i++) q[r * Dq + Dn + i] = x.qp[r * Dr + i]!;
  }
  for (let b = 0; b < B; b++) for (let s = 0; s < Skv; s++) for (let h = 0; h < H; h++) {
    const r = (b * Skv + s) * H + h;
    for (let i = 0; i < Dn; i++) k[r * Dq + i] = x.kn[r * Dn + i]!;
    for (let i = 0; i < Dr; i++) k[r * Dq + Dn + i] = x.kp[(b * Skv + s) * Dr + i]!;
  }
  const o = new Float64Array(B * Sq * H * Dv), lse = new Float64Array(B * H * Sq);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(B * Skv * H * Dv);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let s = 0; s < Sq; s++) {
    const r = (b * Sq + s) * H + h;
    const sc = new Float64Array(Skv).fill(-Infinity);
    for (let t = 0; t < Skv; t++) {
      if (causal && t > s) continue; // mask: −∞ above the diagonal
      const rt = (b * Skv + t) * H + h;
      let acc = 0;
      for (let i = 0; i < Dq; i++) acc += q[r * Dq + i]! * k[rt * Dq + i]!;
      sc[t] = acc * scale;
    }
    const m = Math.max(...sc);
    let z = 0;
    for (let t = 0; t < Skv; t++) z += Math.exp(sc[t]! - m);
    lse[(b * H + h) * Sq + s] = m + Math.log(z);
    const p = sc.map((x) => Math.exp(x - m) / z);
    for (let t = 0; t < Skv; t++) for (let i = 0; i < Dv; i++) o[r * Dv + i] += p[t]! * x.v[((b * Skv + t) * H + h) * Dv + i]!;
    // Backward: dP_t = dO·v_t, dS_t = P_t·(dP_t − Σ_u P_u dP_u), dq = scale·Σ dS_t k_t, dk_t = scale·dS_t q.
    const dP = new Float64Array(Skv);
    let dot = 0;
    for (let t = 0; t < Skv; t++) {
      const rt = (b * Skv + t) * H + h;
      for (let i = 0; i < Dv; i++) { dP[t] += dout[r * Dv + i]! * x.v[rt * Dv + i]!; dv[rt * Dv + i] += p[t]! * dout[r * Dv + i]!; }
      dot += p[t]! * dP[t]!;
    }
    for (let t = 0; t < Skv; t++) {
      const rt = (b * Skv + t) * H + h;
      const dS = p[t]! * (dP[t]! - dot) * scale;
      for (let i = 0; i < Dq; i++) { dq[r * Dq + i] += dS * k[rt * Dq + i]!; dk[rt * Dq + i] += dS * q[r * Dq + i]!; }
    }
  }
  // Split the full gradients back into the five pieces; k_pe's is the sum over heads.
  const dqn = new Float64Array(x.qn.length), dqp = new Float64Array(x.qp.length), dkn = new Float64Array(x.kn.length);
  const dkp = new Float64Array(x.kp.length);
  for (let b = 0; b < B; b++) for (let s = 0; s < Sq; s++) for (let h = 0; h < H; h++) {
    const r = (b * Sq + s) * H + h;
    for (let i = 0; i < Dn; i++) dqn[r * Dn + i] = dq[r * Dq + i]!;
    for (let i = 0; i < Dr; i++) dqp[r * Dr + i] = dq[r * Dq + Dn + i]!;
  }
  for (let b = 0; b < B; b++) for (let s = 0; s < Skv; s++) for (let h = 0; h < H; h++) {
    const r = (b * Skv + s) * H + h;
    for (let i = 0; i < Dn; i++) dkn[r * Dn + i] = dk[r * Dq + i]!;
    for (let i = 0; i < Dr; i++) dkp[(b * Skv + s) * Dr + i] += dk[r * Dq + Dn + i]!;
  }
  return { o, lse, dqn, dqp, dkn, dkp, dv };
}

function assertClose(what: string, got: Float32Array, want: Float64Array): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let num = 0, den = 0, worst = 0;
  for (let i = 0; i < got.length; i++) {
    assert.ok(Number.isFinite(got[i]!), `${what}[${i}] is ${got[i]} (not written?)`);
    const e = got[i]! - want[i]!;
    num += e * e; den += want[i]! ** 2; worst = Math.max(worst, Math.abs(e));
  }
  const rel = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  assert.ok(rel < 1e-5 && worst < 1e-4, `${what}: relative error ${rel.toExponential(2)}, max abs error ${worst.toExponential(2)}`);
}

const CASES: [number, number, boolean][] = [];
for (const S of [1, 7, 33]) for (const causal of [true, false]) CASES.push([S, S, causal]);
// Unmasked blocks with more keys than queries and fewer (ring attention's q 2c × kv c, q c × kv 2c).
CASES.push([7, 12, false], [12, 5, false], [1, 9, false], [33, 2, false]);

for (const [Sq, Skv, causal] of CASES) for (const H of [1, 3]) {
  test(`mlaAttention vs float64 reference: q ${Sq} × kv ${Skv} H=${H} ${causal ? 'causal' : 'non-causal'}`, () => {
    const d: Dims = { B: 2, Sq, Skv, H, Dn: 5, Dr: 4, Dv: 3 };
    const { B, Dn, Dr, Dv } = d;
    let seed = 1000 * Skv + 100 * Sq + 10 * H + (causal ? 1 : 0);
    const x: Inputs = {
      qn: randomValues(B * Sq * H * Dn, seed++), qp: randomValues(B * Sq * H * Dr, seed++),
      kn: randomValues(B * Skv * H * Dn, seed++), kp: randomValues(B * Skv * Dr, seed++), v: randomValues(B * Skv * H * Dv, seed++),
    };
    const dout = randomValues(B * Sq * H * Dv, seed++);
    const scale = 0.37;
    const ref = reference(d, x, dout, causal, scale);
    const before = be.memoryStats().liveBytes;
    tidy(() => {
      const qn = fromHost(be, x.qn, [B, Sq, H, Dn], 'f32'), qp = fromHost(be, x.qp, [B, Sq, H, Dr], 'f32');
      const kn = fromHost(be, x.kn, [B, Skv, H, Dn], 'f32'), kp = fromHost(be, x.kp, [B, Skv, 1, Dr], 'f32');
      const v = fromHost(be, x.v, [B, Skv, H, Dv], 'f32');
      const opts = { causal, scale };
      // The backend method directly, outputs poisoned.
      const o = full(be, [B, Sq, H, Dv], 'f32', NaN), lse = full(be, [B, H, Sq], 'f32', NaN);
      be.mlaAttention(o, lse, qn, qp, kn, kp, v, opts);
      assertClose('o', toHostF32(o), ref.o);
      assertClose('lse', toHostF32(lse), ref.lse);
      const grads = {
        dqNope: full(be, [B, Sq, H, Dn], 'f32', NaN), dqPe: full(be, [B, Sq, H, Dr], 'f32', NaN),
        dkNope: full(be, [B, Skv, H, Dn], 'f32', NaN), dkPe: full(be, [B, Skv, 1, Dr], 'f32', NaN), dv: full(be, [B, Skv, H, Dv], 'f32', NaN),
      };
      be.mlaAttentionBackward(grads, fromHost(be, dout, [B, Sq, H, Dv], 'f32'), qn, qp, kn, kp, v, o, lse, opts);
      assertClose('dq_nope', toHostF32(grads.dqNope), ref.dqn);
      assertClose('dq_pe', toHostF32(grads.dqPe), ref.dqp);
      assertClose('dk_nope', toHostF32(grads.dkNope), ref.dkn);
      assertClose('dk_pe (Σ over heads)', toHostF32(grads.dkPe), ref.dkp);
      assertClose('dv', toHostF32(grads.dv), ref.dv);
      // The op gives the same forward.
      const viaOp = mlaAttention(qn, qp, kn, kp, v, opts);
      assertClose('op o', toHostF32(viaOp.o), ref.o);
      assertClose('op lse', toHostF32(viaOp.lse), ref.lse);
    });
    assert.equal(be.memoryStats().liveBytes, before);
  });
}

test('causal attention: query 0 sees only key 0, so its output is v at position 0', () => {
  const B = 1, S = 4, H = 2, Dn = 3, Dr = 2, Dv = 3;
  tidy(() => {
    const v = randomValues(B * S * H * Dv, 7);
    const o = mlaAttention(fromHost(be, randomValues(B * S * H * Dn, 1), [B, S, H, Dn], 'f32'), fromHost(be, randomValues(B * S * H * Dr, 2), [B, S, H, Dr], 'f32'),
      fromHost(be, randomValues(B * S * H * Dn, 3), [B, S, H, Dn], 'f32'), fromHost(be, randomValues(B * S * Dr, 4), [B, S, 1, Dr], 'f32'),
      fromHost(be, v, [B, S, H, Dv], 'f32'), { causal: true, scale: 1 }).o;
    const got = toHostF32(o);
    for (let i = 0; i < H * Dv; i++) assert.ok(Math.abs(got[i]! - v[i]!) < 1e-6);
  });
});

test('a causal mask with q and kv of different lengths is refused, naming both lengths', () => {
  tidy(() => {
    const t = (shape: number[]) => fromHost(be, randomValues(shape.reduce((a, b) => a * b, 1), 5), shape, 'f32');
    const o = t([1, 3, 1, 2]), lse = t([1, 1, 3]);
    assert.throws(() => be.mlaAttention(o, lse, t([1, 3, 1, 4]), t([1, 3, 1, 2]), t([1, 5, 1, 4]), t([1, 5, 1, 2]), t([1, 5, 1, 2]), { causal: true, scale: 1 }),
      /causal mask needs as many queries as keys, got q 3 × kv 5/);
  });
});
