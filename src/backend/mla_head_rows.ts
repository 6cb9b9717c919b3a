// The layouts Backend.mlaAttention takes for q_nope, k_nope and v: contiguous [B,S,H,width], or a
// view of a wider [B,S,H,rs] tensor (the projection the model split them from, rs 192 or 256),
// its other dimensions packed. One rule for the CUDA launcher's checks and the test backend's
// contract.
import type { Tensor } from '../tensor/tensor.js';

/**
 * rs, the elements from one head's row to the next, of a rank-4 t in a layout mlaAttention takes
 * (its width when contiguous; a view's stride, ≥ the width and a multiple of 8 so rows stay
 * 16-byte aligned); null for any other strides.
 */
export function headRowStride(t: Tensor): number | null {
  if (t.rank !== 4) return null;
  if (t.isContiguous()) return t.shape[3]!;
  const [, S, H, width] = t.shape as [number, number, number, number], rs = t.strides[2]!;
  const packed = [S * H * rs, H * rs, rs, 1];
  const ok = rs >= width && rs % 8 === 0 && t.strides.every((st, i) => t.shape[i] === 1 || st === packed[i]);
  return ok ? rs : null;
}
