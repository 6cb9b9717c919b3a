// One SwiGLU value, silu(g)·u = g·σ(g)·u, for swiglu.cu and for the grouped GEMM epilogue that
// computes it from the gate and up products it has just rounded (grouped_gemm_tma.cu, "SwiGLU").
// One definition, so the two give the same bits from the same bf16 inputs: no additions after a
// product here, so no contraction into an FMA can differ between the two kernels.
#pragma once

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }
__device__ __forceinline__ float swiglu_value(float g, float u) { return g * sigmoid(g) * u; }
