// The lean recipe's multi-tensor Adam/AdamW (optim/lean_adam.ts): bf16 weights and bf16
// moments, no f32 master. One launch walks every slot of a list (multi_tensor.cuh's table: per
// entry the weights, grad, m and v); each element is widened to f32, stepped with adam_step.cuh
// (the default recipe's arithmetic, its bias corrections as products: lean_element), and the
// weights, m and v are stored back with stochastic rounding (stochastic_round.cuh; one hash of
// seed, step, stream = first_stream + entry and element index per element), the gradient zeroed in the same pass when zero_grad is set (the trainer clears
// it and marks the gradients logically zero instead: autograd/lazy_grad_zero.ts). The CPU reference is
// backend/cpu/adam_lean.ts; the bits drawn are the same, so results differ from it only where
// f32 arithmetic (its order, the reciprocals) moves a value across a rounding threshold (one bf16
// spacing at most).
// Entries whose addresses are all 16-byte aligned move four elements per access.
//
// Bytes per parameter with bf16 gradients: read weights, grad, m, v (2+2+2+2) and write weights,
// m, v (2+2+2): 14 B, plus 2 for the zeroed gradient when zero_grad (16 B; with f32 gradients
// 18 B, 22 B zeroed), against the default recipe's 30 B (34 B zeroed). Floor for the 2.255B
// parameters of the 4-layer DeepSeek-V2-Lite bench: 31.6 GB ≈ 10.5 ms at ~3 TB/s on an H100.
#include "common.cuh"
#include "adam_step.cuh"
#include "multi_tensor.cuh"
#include "stochastic_round.cuh"

template <typename TG>
__device__ __forceinline__ void lean_zero4(TG* p) {
  const float z[4] = {0.f, 0.f, 0.f, 0.f};
  store4(p, z);
}

// adam_step.cuh's step with the bias corrections applied as products by their reciprocals
// (inv_bc1, inv_bc2, once per thread) instead of two IEEE divisions per element: m̂ and v̂ move by
// at most an f32 ulp, far below the bf16 rounding that follows, and the pass sheds ~15 of its
// ~110 instructions per element.
__device__ __forceinline__ void lean_element(bf16* w, float g, bf16* m, bf16* v, const AdamStep& h, float wd, float inv_bc1,
                                             float inv_bc2, unsigned key, unsigned i) {
  float mi = to_f32(*m), vi = to_f32(*v);
  const float p0 = to_f32(*w);
  adam_moments(p0, g, mi, vi, h, wd);
  const float p = adam_apply(p0, __fmul_rn(mi, inv_bc1), __fmul_rn(vi, inv_bc2), h, wd);
  const unsigned bits = element_bits(key, i);
  *w = stochastic_round_bf16(p, draw_weights(bits));
  *m = stochastic_round_bf16(mi, draw_m(bits));
  *v = stochastic_round_bf16(vi, draw_v(bits));
}

template <typename TG>
__device__ __forceinline__ void adam_lean_multi_body(const MtEntry* __restrict__ entries, const int* __restrict__ chunk_entry,
                                                     int num_chunks, const AdamStep& h, unsigned seed, unsigned step,
                                                     unsigned first_stream, int zero_grad) {
  for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const MtChunk k = mt_chunk(entries, chunk_entry, c);
    const int flags = k.e->flags;
    const unsigned key = rounding_key(seed, step, first_stream + (unsigned)chunk_entry[c]);
    bf16* __restrict__ w = reinterpret_cast<bf16*>(k.e->ptr[0]) + k.start;
    TG* __restrict__ grad = reinterpret_cast<TG*>(k.e->ptr[1]) + k.start;
    bf16* __restrict__ m = reinterpret_cast<bf16*>(k.e->ptr[2]) + k.start;
    bf16* __restrict__ v = reinterpret_cast<bf16*>(k.e->ptr[3]) + k.start;
    const float wd = (flags & MT_FLAG_DECAY) ? h.wd : 0.f;
    const float inv_bc1 = __frcp_rn(h.bc1), inv_bc2 = __frcp_rn(h.bc2);
    const unsigned base = (unsigned)k.start;  // element index in the entry, mod 2^32 (as the CPU reference)
    int done = 0;
    if (flags & MT_FLAG_VEC16) {
      const int groups = k.len / 4;
      for (int j = threadIdx.x; j < groups; j += blockDim.x) {
        const int i = 4 * j;
        float g[4];
        load4(grad + i, g);
        alignas(8) bf16 ww[4], mm[4], vv[4];
        *reinterpret_cast<Words2*>(ww) = *reinterpret_cast<const Words2*>(w + i);
        *reinterpret_cast<Words2*>(mm) = *reinterpret_cast<const Words2*>(m + i);
        *reinterpret_cast<Words2*>(vv) = *reinterpret_cast<const Words2*>(v + i);
#pragma unroll
        for (int e = 0; e < 4; ++e) lean_element(ww + e, g[e], mm + e, vv + e, h, wd, inv_bc1, inv_bc2, key, base + (unsigned)(i + e));
        *reinterpret_cast<Words2*>(w + i) = *reinterpret_cast<const Words2*>(ww);
        *reinterpret_cast<Words2*>(m + i) = *reinterpret_cast<const Words2*>(mm);
        *reinterpret_cast<Words2*>(v + i) = *reinterpret_cast<const Words2*>(vv);
        if (zero_grad) lean_zero4(grad + i);
      }
      done = groups * 4;
    }
    for (int i = done + threadIdx.x; i < k.len; i += blockDim.x) {
      lean_element(w + i, to_f32(grad[i]), m + i, v + i, h, wd, inv_bc1, inv_bc2, key, base + (unsigned)i);
      if (zero_grad) grad[i] = from_f32<TG>(0.f);
    }
  }
}

#define MT_ADAM_LEAN_MULTI(TG)                                                                                        \
  extern "C" __global__ void adam_lean_multi_##TG(const MtEntry* entries, const int* chunk_entry, int num_chunks,      \
                                                  float lr, float beta1, float beta2, float eps, float wd, int decoupled, \
                                                  float bc1, float bc2, float gradScale, unsigned seed, unsigned step,  \
                                                  unsigned first_stream, int zero_grad) {                             \
    const AdamStep h = {lr, beta1, beta2, eps, wd, decoupled, bc1, bc2, gradScale};                                   \
    adam_lean_multi_body<TG>(entries, chunk_entry, num_chunks, h, seed, step, first_stream, zero_grad);               \
  }
MT_FLOAT_TYPES1(MT_ADAM_LEAN_MULTI)
