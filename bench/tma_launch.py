"""Launching the Hopper MLA kernels that take CUtensorMap parameters from Python (the harness):
encodes tensor maps with the driver's cuTensorMapEncodeTiled through ctypes and launches with
cuLaunchKernel, since CuPy's kernel call passes only pointers and scalars. Same map geometry as
src/backend/cuda/ops/mla_attention.ts (headRows / sharedRows)."""
import ctypes

import numpy as np

_cuda = ctypes.CDLL("libcuda.so.1")
_cuda.cuTensorMapEncodeTiled.restype = ctypes.c_int
_cuda.cuTensorMapEncodeTiled.argtypes = [
    ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
_cuda.cuLaunchKernel.restype = ctypes.c_int
_cuda.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 6 + [ctypes.c_uint, ctypes.c_void_p,
                                                                        ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
BF16, F32 = 9, 7
SWIZZLE_NONE, SWIZZLE_128B = 0, 3
L2_256B = 3


class TensorMap:
    """128 bytes, 64-byte aligned, holding one encoded CUtensorMap."""

    def __init__(self, dtype, address, dims, strides, box, swizzle=SWIZZLE_128B):
        self._raw = (ctypes.c_uint8 * 192)()
        self.ptr = (ctypes.addressof(self._raw) + 63) & ~63
        rank = len(dims)
        dims_a = (ctypes.c_uint64 * rank)(*dims)
        strides_a = (ctypes.c_uint64 * max(rank - 1, 1))(*(strides or [0]))
        box_a = (ctypes.c_uint32 * rank)(*box)
        ones = (ctypes.c_uint32 * rank)(*([1] * rank))
        r = _cuda.cuTensorMapEncodeTiled(self.ptr, dtype, rank, address, dims_a, strides_a, box_a, ones, 0, swizzle,
                                         L2_256B, 0)
        if r != 0:
            raise RuntimeError(f"cuTensorMapEncodeTiled failed ({r}): dims {dims} strides {strides} box {box}")


def head_rows(t, rows):
    """bf16 [B,S,H,w] tensor: dims (w, H, S, B), box (64, 1, rows, 1)."""
    B, S, H, w = t.shape
    return TensorMap(BF16, t.data_ptr(), [w, H, S, B], [2 * w, 2 * w * H, 2 * w * H * S], [64, 1, rows, 1])


def shared_rows(t, rows):
    """bf16 [B,S,1,w] tensor (the rope key): dims (w, S, B), box (64, rows, 1)."""
    B, S, _, w = t.shape
    return TensorMap(BF16, t.data_ptr(), [w, S, B], [2 * w, 2 * w * S], [64, rows, 1])


def launch(func, grid, block, smem, stream, args):
    """args: TensorMap, or numpy scalars (np.uint64 pointers, np.int32, np.uint32, np.float32)."""
    holders = []
    for a in args:
        if isinstance(a, TensorMap):
            holders.append(ctypes.c_void_p(a.ptr))
            continue
        c = {np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
             np.dtype(np.float32): ctypes.c_float}[np.asarray(a).dtype](a.item())
        holders.append(c)
    params = (ctypes.c_void_p * len(args))(*[h.value if isinstance(h, ctypes.c_void_p) else ctypes.addressof(h)
                                             for h in holders])
    fn = getattr(func, "kernel", func)  # cupy RawKernel → its cupy.cuda.function.Function
    r = _cuda.cuLaunchKernel(fn.ptr, *grid, *block, smem, stream, params, None)
    if r != 0:
        raise RuntimeError(f"cuLaunchKernel failed ({r})")
