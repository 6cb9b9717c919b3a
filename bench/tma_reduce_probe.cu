// How fast can an SM, and the whole card, push f32 bulk reduce-adds (cp.reduce.async.bulk.tensor
// .add) from shared memory into device memory? The Hopper MLA backward sends every dQ partial
// this way (mla_attention_bwd_hopper.cu: 2 KB boxes of 16 query rows × 32 f32 columns into
// dq_accum [B,S,H,192]), and its profile left open whether that staging waits on the copy
// engine's latency (more boxes in flight would hide it) or on L2's add throughput (only fewer
// bytes would help). bench/attention_harness.py --reduce-probe launches this kernel.
//
// Each active warp fills `slots` 2 KB boxes with 1.0f once, then its lane 0 issues `iters`
// reduce-adds of them in turn, reusing a box once the copy engine has read it (up to slots − 1
// reads stay pending), into dq_accum rows that walk through the first `region_rows` query rows
// (a region L2 holds, or not) of head (warp % heads). Every add adds 512 ones, so the tensor's
// sum checks that all of them landed. flat: the same adds as contiguous 2 KB bulk reduce-adds
// into dq (the same bytes, laid out box by box) instead. restage = 1 does what the backward's staging does per box
// instead: wait for the slot's read, the whole warp stores the box again (eight 8-byte stores a
// lane), proxy fence, warp sync, issue. Lane 0 of each warp writes its loop's clock cycles to
// cycles[global warp], so the harness reports cycles per box.
#include "mla_attention_hopper.cuh"

using namespace mla;
using namespace mla::hop;

namespace {
__device__ __forceinline__ void reduce_add_box(const TensorMap& m, u32 src, int col, int head, int row) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];"
      ::"l"(tmap_addr(m)), "r"(src), "r"(col), "r"(head), "r"(row), "r"(0) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// The same 2 KB as one contiguous bulk (non-tensor) reduce-add: what a box-tiled dq_accum
// ([.., 16 rows × 32 columns] contiguous per box) would allow.
__device__ __forceinline__ void reduce_add_bulk(float* dst, u32 src) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], 2048;" ::"l"(dst), "r"(src)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// Until at most N of this thread's bulk groups still have to read shared memory.
template <int N>
__device__ __forceinline__ void wait_reads() { asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory"); }
}  // namespace

// Launch: grid (up to one block per SM), 256 threads (8 warps), dynamic shared memory at least
// 8 · slots · box_rows · 128 + 1024 and at least 120 KB, so that no SM holds two blocks.
// lanes > 1 (fixed boxes only, lanes == slots): lane l of each warp issues every lanes-th box
// from its own slot, so a warp has `lanes` issuing threads (are bulk groups serialised per
// thread or per warp?). box_rows (8, 16, 32, 64; fixed tensor boxes only, the map's box rows
// the same): boxes of box_rows × 32 f32 instead of 16 × 32 (does a bigger box cost a warp more
// time, or the same?). Warps from lsu_from on add the same boxes from registers with
// red.global.add.v4.f32 instead (four per lane per box; no shared memory, no copy engine).
extern "C" __global__ void __launch_bounds__(256, 1)
tma_reduce_probe(const __grid_constant__ TensorMap tm_dq, int warps_active, int slots, int iters, int region_rows,
                 int heads, int restage, long long* __restrict__ cycles, float* __restrict__ dq, int flat, int lanes,
                 int lsu_from, int box_rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp >= warps_active || (slots != 1 && slots != 2 && slots != 4) || (lanes != 1 && (lanes != slots || restage)) ||
      (box_rows != 16 && (restage || flat || lsu_from < warps_active)))
    return;
  const int box_bytes = box_rows * 128;
  const int gw = blockIdx.x * warps_active + warp;
  const int row_boxes = region_rows / box_rows;
  // Six boxes cover a row block's 192 columns, as a dQ step's boxes do; then the next row
  // block, 16 query rows further, spread over the region so warps rarely meet.
  auto row_block = [&](int i) { return static_cast<int>((static_cast<long long>(gw) * 7919 + i / 6) % row_boxes); };
  if (warp >= lsu_from) {
    const long long t0 = clock64();
    const float4 one = make_float4(1.f, 1.f, 1.f, 1.f);
    for (int i = 0; i < iters; i++) {
      const int rb = row_block(i);
      #pragma unroll
      for (int k = 0; k < 4; k++) {
        float* p = dq + (static_cast<long long>(16 * rb + 4 * k + (lane >> 3)) * heads + gw % heads) * 192 + 32 * (i % 6) +
                   4 * (lane & 7);
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(one.x), "f"(one.y), "f"(one.z),
                     "f"(one.w) : "memory");
      }
    }
    if (lane == 0) cycles[gw] = clock64() - t0;
    return;
  }
  const u32 mine = base + warp * slots * box_bytes;
  for (int k = lane; k < slots * box_bytes / 4; k += 32)
    asm volatile("st.shared.f32 [%0], %1;" ::"r"(mine + 4 * k), "f"(1.f) : "memory");
  fence_proxy_async();  // the copy engine reads what these generic stores wrote
  __syncwarp();
  if (!restage && lane >= lanes) return;
  const long long t0 = clock64();
  for (int i = 0; i < iters; i++) {
    if (lanes > 1) {  // lane l: boxes l, l + lanes, ... from slot l, one of its own groups pending
      if (i % lanes != lane) continue;
      if (i >= lanes) wait_reads<0>();
    } else if (i >= slots && lane == 0) {
      if (slots == 1) wait_reads<0>();
      else if (slots == 2) wait_reads<1>();
      else wait_reads<3>();
    }
    const u32 box = mine + (i % slots) * box_bytes;
    if (restage) {
      __syncwarp();
      #pragma unroll
      for (int k = 0; k < 8; k++)
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(box + 256 * k + 8 * lane), "f"(1.f), "f"(1.f) : "memory");
      fence_proxy_async();
      __syncwarp();
    }
    const int rb = row_block(i);
    if (lane == i % lanes) {
      if (flat) reduce_add_bulk(dq + ((static_cast<long long>(gw % heads) * row_boxes + rb) * 6 + i % 6) * 512, box);
      else reduce_add_box(tm_dq, box, 32 * (i % 6), gw % heads, box_rows * rb);
    }
  }
  if (lane < lanes) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  if (lane == 0) cycles[gw] = clock64() - t0;
}
