// One element of an Adam/AdamW step, shared by adam.cu (one tensor) and adam_multi.cu (a list),
// so both give the same bits. g = g_raw·grad_scale (+ wd·p for Adam/L2); m = β1·m + (1−β1)·g;
// v = β2·v + (1−β2)·g²; returns p − lr·(m/bc1 / (sqrt(v/bc2) + eps) (+ wd·p for AdamW)).
#pragma once

struct AdamStep {
  float lr, beta1, beta2, eps, wd;
  int decoupled;
  float bc1, bc2, grad_scale;
};

// Every operation is an explicitly rounded intrinsic: left to itself, NVRTC contracts a·b + c
// into an FMA in one kernel's inlining context and not in another's (measured on the H100: the
// scalar and the vectorised path of the two kernels differed by an ulp in m), and the two must
// give the same bits.
/** m and v stepped in place; returns the gradient term g (scaled, plus wd·p for Adam/L2). */
__device__ __forceinline__ void adam_moments(float p, float g_raw, float& m, float& v, const AdamStep& h, float wd) {
  float g = __fmul_rn(g_raw, h.grad_scale);
  if (!h.decoupled) g = __fmaf_rn(wd, p, g);
  m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(1.f - h.beta1, g));
  v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(__fmul_rn(1.f - h.beta2, g), g));
}

/** The new weight from the bias-corrected moments m̂, v̂. */
__device__ __forceinline__ float adam_apply(float p, float m_hat, float v_hat, const AdamStep& h, float wd) {
  float upd = __fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), h.eps));
  if (h.decoupled) upd = __fmaf_rn(wd, p, upd);
  return __fsub_rn(p, __fmul_rn(h.lr, upd));
}

__device__ __forceinline__ float adam_element(float p, float g_raw, float& m, float& v, const AdamStep& h, float wd) {
  adam_moments(p, g_raw, m, v, h, wd);
  return adam_apply(p, __fdiv_rn(m, h.bc1), __fdiv_rn(v, h.bc2), h, wd);
}
