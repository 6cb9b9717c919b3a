// SwiGLU: out = silu(gate)·up with silu(g) = g·σ(g). Backward:
// dgate = dout·up·σ(g)·(1 + g·(1 − σ(g))), dup = dout·silu(g). Elementwise over [R,F].
// Floors: forward moves 3 tensors, backward 5 (bytes / ~3 TB/s); e.g. 98304 routed slots × 1408
// bf16: forward 830 MB ≈ 0.28 ms, backward 1.38 GB ≈ 0.46 ms.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

template <typename TO, typename TI>
__device__ __forceinline__ void swiglu_fwd(TO* out, const TI* __restrict__ gate, const TI* __restrict__ up, long long n) {
  MT_GRID_STRIDE(i, n) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<TO>(g * sigmoid(g) * to_f32(up[i]));
  }
}

template <typename TO, typename TD, typename TI>
__device__ __forceinline__ void swiglu_bwd(TO* dgate, TO* dup, const TD* dout, const TI* gate, const TI* up, long long n) {
  MT_GRID_STRIDE(i, n) {
    const float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
    const float sg = sigmoid(g);
    dgate[i] = from_f32<TO>(d * u * sg * (1.f + g * (1.f - sg)));
    dup[i] = from_f32<TO>(d * g * sg);
  }
}

// No __restrict__ on outputs: the caller may write dgate over gate and dup over up.
#define MT_SWIGLU_FWD(TO, TI)                                                                               \
  extern "C" __global__ void swiglu_fwd_##TO##_##TI(TO* out, const TI* gate, const TI* up, long long n) {  \
    swiglu_fwd<TO, TI>(out, gate, up, n);                                                                   \
  }
#define MT_SWIGLU_BWD(TO, TD, TI)                                                                                  \
  extern "C" __global__ void swiglu_bwd_##TO##_##TD##_##TI(TO* dgate, TO* dup, const TD* dout, const TI* gate,   \
                                                           const TI* up, long long n) {                           \
    swiglu_bwd<TO, TD, TI>(dgate, dup, dout, gate, up, n);                                                         \
  }
MT_FLOAT_TYPES2(MT_SWIGLU_FWD)
MT_FLOAT_TYPES3(MT_SWIGLU_BWD)
