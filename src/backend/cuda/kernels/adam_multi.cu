// Multi-tensor Adam/AdamW: one launch updates every parameter of a list (the device table of
// multi_tensor.cuh: per entry param, grad, m, v and the optional compute copy lowp), each element
// with adam_step.cuh's arithmetic (the bits of adam.cu), writes the compute copy and, when
// zero_grad is set, zeroes the gradient in the same pass. The trainer clears zero_grad for whole
// parameters: it marks their gradients logically zero instead (autograd/lazy_grad_zero.ts), and
// the next step's first write overwrites them. The per-entry decay flag chooses wd or 0 (norm
// weights). Entries whose addresses are all 16-byte aligned move four elements per access
// (16-byte f32 loads and stores, 8-byte bf16); a chunk's last len % 4 elements, and unaligned
// entries, go one element at a time.
//
// Bytes per parameter: read param, grad, m, v (4+4+4+4) and write param, m, v and the bf16 copy
// (4+4+4+2): 30 B, plus 4 for the zeroed f32 gradient when zero_grad (34 B; sharded parameters).
// Floor for the 2.255B parameters of the 4-layer DeepSeek-V2-Lite bench (bench train): 67.7 GB
// ≈ 22.6 ms at ~3 TB/s on an H100 (76.7 GB ≈ 25.6 ms with the zeroing).
#include "common.cuh"
#include "adam_step.cuh"
#include "multi_tensor.cuh"

template <typename TG>
__device__ __forceinline__ void zero4(TG* p) {
  const float z[4] = {0.f, 0.f, 0.f, 0.f};
  store4(p, z);
}

template <typename TG, typename TL>
__device__ __forceinline__ void adam_multi_body(const MtEntry* __restrict__ entries, const int* __restrict__ chunk_entry,
                                                int num_chunks, const AdamStep& h, int zero_grad) {
  for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const MtChunk k = mt_chunk(entries, chunk_entry, c);
    const int flags = k.e->flags;
    float* __restrict__ param = reinterpret_cast<float*>(k.e->ptr[0]) + k.start;
    TG* __restrict__ grad = reinterpret_cast<TG*>(k.e->ptr[1]) + k.start;
    float* __restrict__ m = reinterpret_cast<float*>(k.e->ptr[2]) + k.start;
    float* __restrict__ v = reinterpret_cast<float*>(k.e->ptr[3]) + k.start;
    TL* __restrict__ lowp = k.e->ptr[4] != 0ull ? reinterpret_cast<TL*>(k.e->ptr[4]) + k.start : nullptr;
    const float wd = (flags & MT_FLAG_DECAY) ? h.wd : 0.f;
    int done = 0;
    if (flags & MT_FLAG_VEC16) {
      const int groups = k.len / 4;
      for (int j = threadIdx.x; j < groups; j += blockDim.x) {
        const int i = 4 * j;
        float p[4], g[4], mm[4], vv[4];
        load4(param + i, p);
        load4(grad + i, g);
        load4(m + i, mm);
        load4(v + i, vv);
#pragma unroll
        for (int e = 0; e < 4; ++e) p[e] = adam_element(p[e], g[e], mm[e], vv[e], h, wd);
        store4(param + i, p);
        store4(m + i, mm);
        store4(v + i, vv);
        if (zero_grad) zero4(grad + i);
        if (lowp != nullptr) store4(lowp + i, p);
      }
      done = groups * 4;
    }
    for (int i = done + threadIdx.x; i < k.len; i += blockDim.x) {
      float mi = m[i], vi = v[i];
      const float p = adam_element(param[i], to_f32(grad[i]), mi, vi, h, wd);
      m[i] = mi;
      v[i] = vi;
      param[i] = p;
      if (zero_grad) grad[i] = from_f32<TG>(0.f);
      if (lowp != nullptr) lowp[i] = from_f32<TL>(p);
    }
  }
}

#define MT_ADAM_MULTI(TG, TL)                                                                                     \
  extern "C" __global__ void adam_multi_##TG##_##TL(const MtEntry* entries, const int* chunk_entry, int num_chunks, \
                                                    float lr, float beta1, float beta2, float eps, float wd,        \
                                                    int decoupled, float bc1, float bc2, float gradScale,          \
                                                    int zero_grad) {                                               \
    const AdamStep h = {lr, beta1, beta2, eps, wd, decoupled, bc1, bc2, gradScale};                                \
    adam_multi_body<TG, TL>(entries, chunk_entry, num_chunks, h, zero_grad);                                      \
  }
MT_FLOAT_TYPES2(MT_ADAM_MULTI)
