// MLA attention for any head widths and f32 or bf16: the fallback for shapes the tensor-core
// kernels (mla_attention_fwd/bwd.cu: 128/64/128, bf16) do not take, such as the tiny demo
// model. One warp per query row, keys visited one by one with an online softmax; lanes split
// the head dimensions. Correctness over speed: it does O(S²·D) work with no data reuse.
//
// Layouts: qNope [B,Sq,H,Dn], qPe [B,Sq,H,Dr], kNope [B,Skv,H,Dn], kPe [B,Skv,Dr] (shared by
// heads), v [B,Skv,H,Dv], o [B,Sq,H,Dv], lse [B,H,Sq] f32; Sq ≠ Skv only without the causal mask.
// Widths up to 32·MAXPL per lane group.
#include "common.cuh"

// Dims per lane (Dn+Dr ≤ 32·MAXPL and Dv ≤ 32·MAXPL): a -D define from
// ops/mla_attention_generic.ts (MLA_GENERIC_DEFINES), which refuses wider heads.
#ifndef MAXPL
#error "MAXPL is set by ops/mla_attention_generic.ts (MLA_GENERIC_DEFINES)"
#endif

template <typename T>
__device__ void generic_fwd(const T* qn, const T* qp, const T* kn, const T* kp, const T* v, T* o, float* lse,
                            int Sq, int Skv, int H, int Dn, int Dr, int Dv, float scale, int causal) {
  const int s = blockIdx.x, h = blockIdx.y, b = blockIdx.z, lane = threadIdx.x;
  const long row = ((long)b * Sq + s) * H + h;
  float q[MAXPL], acc[MAXPL];
  const int Dq = Dn + Dr;
  for (int i = 0; i < MAXPL; ++i) {
    const int d = lane + 32 * i;
    q[i] = d < Dn ? to_f32(qn[row * Dn + d]) : (d < Dq ? to_f32(qp[row * Dr + d - Dn]) : 0.f);
    acc[i] = 0.f;
  }
  float m = -MT_INF, l = 0.f;
  const int last = causal ? s : Skv - 1;
  for (int t = 0; t <= last; ++t) {
    const long krow = ((long)b * Skv + t) * H + h;
    float part = 0.f;
    for (int i = 0; i < MAXPL; ++i) {
      const int d = lane + 32 * i;
      if (d < Dn) part += q[i] * to_f32(kn[krow * Dn + d]);
      else if (d < Dq) part += q[i] * to_f32(kp[((long)b * Skv + t) * Dr + d - Dn]);
    }
    const float sc = warp_sum(part) * scale;
    const float mNew = fmaxf(m, sc);
    const float corr = expf(m - mNew), p = expf(sc - mNew);
    l = l * corr + p;
    for (int i = 0; i < MAXPL; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < Dv ? p * to_f32(v[krow * Dv + d]) : 0.f);
    }
    m = mNew;
  }
  for (int i = 0; i < MAXPL; ++i) {
    const int d = lane + 32 * i;
    if (d < Dv) o[row * Dv + d] = from_f32<T>(acc[i] / l);
  }
  if (lane == 0) lse[((long)b * H + h) * Sq + s] = m + logf(l);
}

// Backward, one warp per query row: dq in registers; dk, dv and dk_pe (summed over heads) added
// into f32 accumulators with atomics (so not bit-reproducible run to run).
template <typename T>
__device__ void generic_bwd(const T* qn, const T* qp, const T* kn, const T* kp, const T* v, const T* o, const T* dout,
                            const float* lse, T* dqn, T* dqp, float* dkn, float* dkp, float* dv,
                            int Sq, int Skv, int H, int Dn, int Dr, int Dv, float scale, int causal) {
  const int s = blockIdx.x, h = blockIdx.y, b = blockIdx.z, lane = threadIdx.x;
  const long row = ((long)b * Sq + s) * H + h;
  const int Dq = Dn + Dr;
  float q[MAXPL], dq[MAXPL], g[MAXPL];
  float dpart = 0.f;
  for (int i = 0; i < MAXPL; ++i) {
    const int d = lane + 32 * i;
    q[i] = d < Dn ? to_f32(qn[row * Dn + d]) : (d < Dq ? to_f32(qp[row * Dr + d - Dn]) : 0.f);
    dq[i] = 0.f;
    g[i] = d < Dv ? to_f32(dout[row * Dv + d]) : 0.f;
    if (d < Dv) dpart += g[i] * to_f32(o[row * Dv + d]);
  }
  const float delta = warp_sum(dpart);
  const float L = lse[((long)b * H + h) * Sq + s];
  const int last = causal ? s : Skv - 1;
  for (int t = 0; t <= last; ++t) {
    const long krow = ((long)b * Skv + t) * H + h;
    const long prow = (long)b * Skv + t;
    float part = 0.f, dp = 0.f;
    for (int i = 0; i < MAXPL; ++i) {
      const int d = lane + 32 * i;
      if (d < Dn) part += q[i] * to_f32(kn[krow * Dn + d]);
      else if (d < Dq) part += q[i] * to_f32(kp[prow * Dr + d - Dn]);
      if (d < Dv) dp += g[i] * to_f32(v[krow * Dv + d]);
    }
    const float p = expf(warp_sum(part) * scale - L);
    const float ds = p * (warp_sum(dp) - delta) * scale;
    for (int i = 0; i < MAXPL; ++i) {
      const int d = lane + 32 * i;
      if (d < Dn) { dq[i] += ds * to_f32(kn[krow * Dn + d]); atomicAdd(&dkn[krow * Dn + d], ds * q[i]); }
      else if (d < Dq) { dq[i] += ds * to_f32(kp[prow * Dr + d - Dn]); atomicAdd(&dkp[prow * Dr + d - Dn], ds * q[i]); }
      if (d < Dv) atomicAdd(&dv[krow * Dv + d], p * g[i]);
    }
  }
  for (int i = 0; i < MAXPL; ++i) {
    const int d = lane + 32 * i;
    if (d < Dn) dqn[row * Dn + d] = from_f32<T>(dq[i]);
    else if (d < Dq) dqp[row * Dr + d - Dn] = from_f32<T>(dq[i]);
  }
}

#define MLA_GENERIC(T)                                                                                          \
  extern "C" __global__ void mla_generic_fwd_##T(const T* qn, const T* qp, const T* kn, const T* kp, const T* v, \
      T* o, float* lse, int Sq, int Skv, int H, int Dn, int Dr, int Dv, float scale, int causal) {              \
    generic_fwd<T>(qn, qp, kn, kp, v, o, lse, Sq, Skv, H, Dn, Dr, Dv, scale, causal);                           \
  }                                                                                                             \
  extern "C" __global__ void mla_generic_bwd_##T(const T* qn, const T* qp, const T* kn, const T* kp, const T* v, \
      const T* o, const T* dout, const float* lse, T* dqn, T* dqp, float* dkn, float* dkp, float* dv,           \
      int Sq, int Skv, int H, int Dn, int Dr, int Dv, float scale, int causal) {                                \
    generic_bwd<T>(qn, qp, kn, kp, v, o, dout, lse, dqn, dqp, dkn, dkp, dv, Sq, Skv, H, Dn, Dr, Dv, scale,       \
                   causal);                                                                                     \
  }

MLA_GENERIC(f32)
MLA_GENERIC(bf16)
