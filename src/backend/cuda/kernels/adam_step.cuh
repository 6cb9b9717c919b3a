// One element of an Adam/AdamW step, shared by adam.cu (one tensor) and adam_multi.cu (a list),
// so both give the same bits. g = g_raw·grad_scale (+ wd·p for Adam/L2); m = β1·m + (1−β1)·g;
// v = β2·v + (1−β2)·g²; returns p − lr·(m/bc1 / (sqrt(v/bc2) + eps) (+ wd·p for AdamW)).
#pragma once

struct AdamStep {
  float lr, beta1, beta2, eps, wd;
  int decoupled;
  float bc1, bc2, grad_scale;
};

__device__ __forceinline__ float adam_element(float p, float g_raw, float& m, float& v, const AdamStep& h, float wd) {
  float g = g_raw * h.grad_scale;
  if (!h.decoupled) g = fmaf(wd, p, g);
  m = h.beta1 * m + (1.f - h.beta1) * g;
  v = h.beta2 * v + (1.f - h.beta2) * g * g;
  float upd = (m / h.bc1) / (sqrtf(v / h.bc2) + h.eps);
  if (h.decoupled) upd = fmaf(wd, p, upd);
  return p - h.lr * upd;
}
