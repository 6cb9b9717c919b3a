// One Adam/AdamW step over f32 master weights, in place, elementwise (the arithmetic of one
// element: adam_step.cuh). bc1 = 1−β1^t and bc2 = 1−β2^t come from the host. lowp (optional)
// receives the new weights rounded to its dtype. The optimizer of a training step runs
// adam_multi.cu over every parameter at once; this kernel is its per-tensor reference.
// Floor per element: param r+w 8, m r+w 8, v r+w 8, grad 4 (or 2), lowp 2 bytes = 30 bytes;
// 15.7B parameters / 8 GPUs would be ~59 GB ≈ 20 ms; a 1B-parameter shard: 30 GB ≈ 10 ms.
#include "common.cuh"
#include "adam_step.cuh"

template <typename TG, typename TL>
__device__ __forceinline__ void adam_body(float* __restrict__ param, const TG* __restrict__ grad, float* __restrict__ m,
                                          float* __restrict__ v, TL* __restrict__ lowp, long long n, const AdamStep& h) {
  MT_GRID_STRIDE(i, n) {
    float mi = m[i], vi = v[i];
    const float p = adam_element(param[i], to_f32(grad[i]), mi, vi, h, h.wd);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
    if (lowp != nullptr) lowp[i] = from_f32<TL>(p);
  }
}

#define MT_ADAM(TG, TL)                                                                                             \
  extern "C" __global__ void adam_##TG##_##TL(float* param, const TG* grad, float* m, float* v, TL* lowp, long long n, \
                                              float lr, float beta1, float beta2, float eps, float wd, int decoupled,  \
                                              float bc1, float bc2, float gradScale) {                                 \
    const AdamStep h = {lr, beta1, beta2, eps, wd, decoupled, bc1, bc2, gradScale};                                  \
    adam_body<TG, TL>(param, grad, m, v, lowp, n, h);                                                               \
  }
MT_FLOAT_TYPES2(MT_ADAM)
