// Groups routed slots by expert, stably: order lists slot ids sorted by expertOfSlot[m] with
// equal experts in increasing slot order; offsets [E+1] are the group boundaries. Deterministic,
// no atomics on positions. Slots are split into B chunks of `chunk` consecutive slots:
//   1. expert_order_hist:  per-chunk histogram → work[b,e].
//   2. expert_order_scan:  one block; per expert an exclusive scan over chunks, then an
//                          exclusive scan over experts (offsets); work[b,e] becomes the first
//                          output position of chunk b's slots of expert e.
//   3. expert_order_place: one warp per chunk walks it 32 slots at a time; __match_any_sync finds
//                          the lanes holding the same expert, a lane's rank among them is the
//                          count of lower lanes, and the highest of them advances the counter.
// A slot whose expert lies outside [0,E) is not placed (its order entry stays unwritten).
// At MoE sizes (98304 slots, E=64) this is launch-bound: ~0.4 MB read and written.
#include "common.cuh"

extern "C" __global__ void expert_order_hist(int* __restrict__ work, const int* __restrict__ expert, int M, int E, int chunk) {
  extern __shared__ int hist[];  // [E]
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const long long start = (long long)blockIdx.x * chunk;
  const long long end = start + chunk < M ? start + chunk : M;
  for (long long m = start + threadIdx.x; m < end; m += blockDim.x) {
    const int e = expert[m];
    if (e >= 0 && e < E) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) work[(long long)blockIdx.x * E + e] = hist[e];
}

extern "C" __global__ void expert_order_scan(int* work, int* __restrict__ offsets, int B, int E) {
  extern __shared__ int total[];  // [E]
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int running = 0;
    for (int b = 0; b < B; ++b) {
      const int h = work[(long long)b * E + e];
      work[(long long)b * E + e] = running;
      running += h;
    }
    total[e] = running;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // E ≤ a few hundred: a serial scan is cheaper than a second barrier tree
    int running = 0;
    for (int e = 0; e < E; ++e) { const int t = total[e]; total[e] = running; offsets[e] = running; running += t; }
    offsets[E] = running;
  }
  __syncthreads();
  for (long long i = threadIdx.x; i < (long long)B * E; i += blockDim.x) work[i] += total[i % E];
}

extern "C" __global__ void expert_order_place(int* __restrict__ order, const int* __restrict__ expert, const int* __restrict__ work,
                                              int M, int E, int chunk) {
  extern __shared__ int next[];  // [E]: next output position of each expert for this chunk
  const int lane = threadIdx.x;  // blockDim.x == 32
  for (int e = lane; e < E; e += 32) next[e] = work[(long long)blockIdx.x * E + e];
  __syncwarp();
  const long long start = (long long)blockIdx.x * chunk;
  const long long end = start + chunk < M ? start + chunk : M;
  const unsigned lowerLanes = (1u << lane) - 1u;
  for (long long base = start; base < end; base += 32) {
    const long long m = base + lane;
    int e = m < end ? expert[m] : -1;
    if (e >= E) e = -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0) order[next[e] + __popc(peers & lowerLanes)] = (int)m;
    __syncwarp();
    if (e >= 0 && lane == 31 - __clz(peers)) next[e] += __popc(peers);
    __syncwarp();
  }
}

// The inverse of one block of the order (Backend.expertOrderInverse): for every position m,
// row_of_slot[order[m]] = m − first inside [first, first + count), −1 outside. order is a
// permutation of the slots, so every entry is written once, with no fill first. ~S·8 bytes.
extern "C" __global__ void expert_order_inverse(int* __restrict__ row_of_slot, const int* __restrict__ order, int S, int first,
                                                int count) {
  MT_GRID_STRIDE(m, S) {
    const int slot = order[m];
    const long long row = m - first;
    if (slot >= 0 && slot < S) row_of_slot[slot] = row >= 0 && row < count ? (int)row : -1;
  }
}
