// One Adam/AdamW step over f32 master weights, in place, elementwise. g = grad·gradScale
// (+ wd·param for Adam/L2); m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
// param −= lr·(m/bc1 / (sqrt(v/bc2) + eps) (+ wd·param for AdamW)); bc1 = 1−β1^t and bc2 = 1−β2^t
// come from the host. lowp (optional) receives the new weights rounded to its dtype.
// Floor per element: param r+w 8, m r+w 8, v r+w 8, grad 4 (or 2), lowp 2 bytes = 30 bytes;
// 15.7B parameters / 8 GPUs would be ~59 GB ≈ 20 ms; a 1B-parameter shard: 30 GB ≈ 10 ms.
#include "common.cuh"

template <typename TG, typename TL>
__device__ __forceinline__ void adam_body(float* __restrict__ param, const TG* __restrict__ grad, float* __restrict__ m,
                                          float* __restrict__ v, TL* __restrict__ lowp, long long n, float lr, float beta1,
                                          float beta2, float eps, float wd, int decoupled, float bc1, float bc2, float gradScale) {
  MT_GRID_STRIDE(i, n) {
    float p = param[i];
    float g = to_f32(grad[i]) * gradScale;
    if (!decoupled) g = fmaf(wd, p, g);
    const float mi = beta1 * m[i] + (1.f - beta1) * g;
    const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float upd = (mi / bc1) / (sqrtf(vi / bc2) + eps);
    if (decoupled) upd = fmaf(wd, p, upd);
    p -= lr * upd;
    param[i] = p;
    if (lowp != nullptr) lowp[i] = from_f32<TL>(p);
  }
}

#define MT_ADAM(TG, TL)                                                                                             \
  extern "C" __global__ void adam_##TG##_##TL(float* param, const TG* grad, float* m, float* v, TL* lowp, long long n, \
                                              float lr, float beta1, float beta2, float eps, float wd, int decoupled,  \
                                              float bc1, float bc2, float gradScale) {                                 \
    adam_body<TG, TL>(param, grad, m, v, lowp, n, lr, beta1, beta2, eps, wd, decoupled, bc1, bc2, gradScale);        \
  }
MT_FLOAT_TYPES2(MT_ADAM)
