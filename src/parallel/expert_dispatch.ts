// Expert parallelism: each rank of the expert-parallel group owns E/ep routed experts (rank i
// owns [i·E/ep, (i+1)·E/ep)) and its own tokens. An MoE layer sends each token to the ranks
// that own its chosen experts, runs the owned experts on what arrives, and sends the weighted
// outputs back (DESIGN.md "Parallelism"). A token routed to several experts of one rank travels
// there once, as one (token, rank) pair carrying its routing for that rank: for each of its k
// slots, the local expert id (i32; L = E/ep marks a slot whose expert is on another rank, which
// the receiver skips) and the router weight (f32).
//
// Per MoE layer, in this order on every rank of the group:
//   1. one device read of the routing (indices [N, k]) plans the pairs on the host;
//   2. one small all-to-all of i32 counts: per peer, its pair count and its slots per local expert;
//   3. the pairs' rows, routing ids and router weights go out (three all-to-alls);
//   4. the receiver expands pairs to slots grouped by local expert (expertOrder over L+1 groups,
//      the unused slots last), runs its experts, and adds each pair's weighted expert outputs into
//      one row (scatterAddRows);
//   5. one all-to-all brings each pair's row back, and the sender adds it into its token.
// Backward runs the reverse all-to-alls of steps 5 and 3 through allToAllRows, so gradients
// reach x, the router weights and every expert's parameters on its owning rank.
//
// Host reads per layer: the routing (step 1) and the received counts (step 2). A version with no
// host round-trip would plan on the device (a kernel that marks each (token, rank) pair and scans
// them, as expertOrder does for experts) and size the all-to-all without host counts: either
// fixed-capacity buffers per peer (N rows, or a capacity factor with dropped tokens) so that
// NCCL's host-side sizes are known in advance, or device-initiated sends (NVSHMEM-style) that
// read the counts on the GPU.
//
// Shapes: N tokens of this rank, D hidden, k slots per token, E routed experts, P ranks in the
// group, L = E/P experts per rank, Q pairs sent, R pairs received, M slots received for the
// local experts.
import { backendOf } from '../backend/backend.js';
import { fromHost, toHostI32 } from '../ops/create.js';
import { reshape } from '../ops/shape.js';
import { expertOrder } from '../ops/routing.js';
import { gatherRows, scatterAddRows } from '../ops/rows.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import type { ExpertDispatchHook, LocalExperts } from '../models/expert_dispatch_hook.js';
import { allToAllRows } from './all_to_all_op.js';
import type { Communicator } from './communicator.js';

/** The routed experts [first, end) that expert-parallel rank epRank of ep owns, of E in all. */
export function ownedExperts(epRank: number, ep: number, numExperts: number): [number, number] {
  if (numExperts % ep !== 0) throw new Error(`internal: ${numExperts} routed experts do not split over ep ${ep}`);
  const L = numExperts / ep;
  return [epRank * L, (epRank + 1) * L];
}

/** What one rank sends for one MoE layer, planned on the host from its routing. */
export interface DispatchPlan {
  /** Pairs sent to each rank of the group (Q in all); pairs are ordered by rank, then by token. */
  sendPairs: number[];
  /** i32 [Q]: the token of each pair. */
  tokenOfPair: Int32Array;
  /**
   * i32 [Q·k]: for slot j of pair q, the routed slot n·k + j it stands for (n its token), used
   * there or not: its router weight travels either way, and the receiver reads only used slots.
   */
  slotOfPairSlot: Int32Array;
  /** i32 [Q·k]: the local expert id on the pair's rank, or L where the slot is unused there. */
  localExpert: Int32Array;
  /** i32 [P, L]: slots sent to each rank for each of its local experts. */
  expertSlots: Int32Array;
}

/** Plans the pairs of a rank's routing: indices i32 [N·k] (global expert ids), P ranks. */
export function planDispatch(indices: Int32Array, k: number, numExperts: number, ranks: number): DispatchPlan {
  const N = indices.length / k, L = numExperts / ranks;
  if (!Number.isInteger(N) || !Number.isInteger(L)) throw new Error(`internal: planDispatch of ${indices.length} slots, k ${k}, ${numExperts} experts over ${ranks} ranks`);
  const sendPairs = new Array<number>(ranks).fill(0);
  const expertSlots = new Int32Array(ranks * L);
  const lastToken = new Int32Array(ranks).fill(-1);
  for (let s = 0; s < indices.length; s++) {
    const e = indices[s]!;
    if (!(e >= 0 && e < numExperts)) throw new Error(`internal: routed slot ${s} names expert ${e} of ${numExperts}`);
    const r = Math.floor(e / L), n = Math.floor(s / k);
    expertSlots[e]!++; // r·L + (e − r·L) = e
    if (lastToken[r] !== n) { lastToken[r] = n; sendPairs[r]!++; }
  }
  const Q = sendPairs.reduce((a, b) => a + b, 0);
  const tokenOfPair = new Int32Array(Q);
  const slotOfPairSlot = new Int32Array(Q * k);
  const localExpert = new Int32Array(Q * k).fill(L);
  const next = new Array<number>(ranks);
  for (let r = 0, at = 0; r < ranks; r++) { next[r] = at; at += sendPairs[r]!; }
  const pairOfRank = new Int32Array(ranks);
  for (let n = 0; n < N; n++) {
    pairOfRank.fill(-1);
    for (let j = 0; j < k; j++) {
      const e = indices[n * k + j]!, r = Math.floor(e / L);
      let q = pairOfRank[r]!;
      if (q < 0) {
        q = pairOfRank[r] = next[r]!++;
        tokenOfPair[q] = n;
        for (let i = 0; i < k; i++) slotOfPairSlot[q * k + i] = n * k + i;
      }
      localExpert[q * k + j] = e - r * L;
    }
  }
  return { sendPairs, tokenOfPair, slotOfPairSlot, localExpert, expertSlots };
}

/** Rows moved by a dispatcher since it was made (its layers summed). */
export interface DispatchStats {
  /** routedOutput calls (MoE layer forwards). */
  layers: number;
  /** Routed slots of this rank's tokens (N·k per layer). */
  slots: number;
  /** (token, rank) pairs sent, one row each way; at most slots. */
  sentRows: number;
  /** Pairs received from the group for the local experts. */
  receivedRows: number;
}

/** The ExpertDispatchHook of the model, over the expert-parallel group `comm`. */
export class ExpertDispatch implements ExpertDispatchHook {
  readonly stats: DispatchStats = { layers: 0, slots: 0, sentRows: 0, receivedRows: 0 };

  constructor(readonly comm: Communicator, readonly numExperts: number) {
    ownedExperts(comm.rank, comm.size, numExperts);
  }

  routedOutput(x: Tensor, indices: Tensor, weights: Tensor, local: LocalExperts): Tensor {
    const comm = this.comm, P = comm.size, E = this.numExperts, L = E / P;
    const [N, k] = indices.shape as [number, number];
    const [first, end] = ownedExperts(comm.rank, P, E);
    if (local.first !== first || local.count !== end - first) {
      throw new Error(`internal: ep rank ${comm.rank} of ${P} owns experts [${first}, ${end}), but the model part holds [${local.first}, ${local.first + local.count})`);
    }
    const backend = backendOf(x);
    const plan = planDispatch(toHostI32(indices), k, E, P);

    // Counts: per peer, [pairs, slots of local expert 0, …, L−1].
    const table = new Int32Array(P * (L + 1));
    for (let r = 0; r < P; r++) {
      table[r * (L + 1)] = plan.sendPairs[r]!;
      table.set(plan.expertSlots.subarray(r * L, (r + 1) * L), r * (L + 1) + 1);
    }
    const ones = new Array<number>(P).fill(1);
    const sendTable = fromHost(backend, table, [P, L + 1], 'i32');
    const recvTable = emptyTensor(backend, [P, L + 1], 'i32');
    comm.allToAll(recvTable, sendTable, ones, ones);
    const got = toHostI32(recvTable);
    sendTable.dispose(); recvTable.dispose();
    const recvPairs = Array.from({ length: P }, (_, p) => got[p * (L + 1)]!);
    const expertRows = Array.from({ length: L }, (_, e) => {
      let s = 0;
      for (let p = 0; p < P; p++) s += got[p * (L + 1) + 1 + e]!;
      return s;
    });
    const Q = plan.tokenOfPair.length, R = recvPairs.reduce((a, b) => a + b, 0), M = expertRows.reduce((a, b) => a + b, 0);
    this.stats.layers++; this.stats.slots += N * k; this.stats.sentRows += Q; this.stats.receivedRows += R;

    // Out: each pair's row, routing ids and router weights.
    const tokenOfPair = fromHost(backend, plan.tokenOfPair, [Q], 'i32');
    const slotOfPairSlot = fromHost(backend, plan.slotOfPairSlot, [Q * k], 'i32');
    const sendIds = fromHost(backend, plan.localExpert, [Q, k], 'i32');
    const recvIds = emptyTensor(backend, [R, k], 'i32');
    comm.allToAll(recvIds, sendIds, plan.sendPairs, recvPairs);
    sendIds.dispose();
    const recvX = allToAllRows(gatherRows(x, tokenOfPair, null), plan.sendPairs, recvPairs, comm);
    const pairWeights = reshape(gatherRows(reshape(weights, [N * k, 1]), slotOfPairSlot, null), [Q, k]);
    const recvW = allToAllRows(pairWeights, plan.sendPairs, recvPairs, comm);
    slotOfPairSlot.dispose();

    // In: slots grouped by local expert (unused slots form group L, after the M used ones).
    const recvSlots = recvIds.view([R * k], [1], recvIds.offset);
    recvIds.dispose();
    const { order, offsets } = expertOrder(recvSlots, L + 1);
    offsets.dispose(); recvSlots.dispose();
    const sorted = order.view([M], [1], order.offset);
    order.dispose();
    // Slot m of the received [R, k] belongs to pair floor(m/k).
    const kHost = fromHost(backend, [k], [1], 'i32');
    const kView = kHost.view([M], [0], kHost.offset);
    const pairOfSlot = emptyTensor(backend, [M], 'i32');
    backend.binary('div', pairOfSlot, sorted, kView);
    kView.dispose(); kHost.dispose();
    const slotWeights = gatherRows(reshape(recvW, [R * k, 1]), sorted, null);
    const expertOut = local.run(gatherRows(recvX, pairOfSlot, null), expertRows);
    const combined = scatterAddRows(expertOut, pairOfSlot, slotWeights, R);
    sorted.dispose(); pairOfSlot.dispose();

    // Back: one row per pair, added into its token.
    const back = allToAllRows(combined, recvPairs, plan.sendPairs, comm);
    const out = scatterAddRows(back, tokenOfPair, null, N);
    tokenOfPair.dispose();
    return out;
  }
}
