// One rank of a parallel layout without a launcher: a `Distributed` whose world is a
// LoopbackCommunicator (loopback_communicator.ts) of the mesh's size, with the mesh's groups
// made from it as a launched run makes them (buildMeshGroups). Handed to `new Training(…)`, it
// runs that rank's real code path on one device — its pipeline stage(s), its parameter shards,
// its routed experts, expert dispatch and the schedule's transfers — while every collective is
// a local copy of the right size. `moetrain bench simulate` uses it to measure one rank of the
// reference layout on one GPU.
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import type { Distributed } from './init_distributed.js';
import { buildMeshGroups } from './init_distributed.js';
import { DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT } from './launch_env.js';
import { LoopbackCommunicator, type CopyTimer } from './loopback_communicator.js';
import { Mesh, meshRankOf, meshWorld, validateMesh, type MeshSizes, type MeshWorkload } from './mesh.js';
import { stagesOfRank, virtualStages } from './schedule.js';
import type { ScheduleKind } from './schedule_sim.js';
import { splitStages } from './stages.js';

/** A simulated rank's Distributed, with the loopback world whose stats say what moved. */
export interface SimulatedRank extends Distributed {
  comm: LoopbackCommunicator;
}

/**
 * World rank `rank` of a mesh of `sizes`, checked against the workload as a launched run is
 * (one line with the numbers and the fix when it does not divide).
 */
export async function simulatedRank(sizes: MeshSizes, rank: number, workload: MeshWorkload, timer?: CopyTimer, overlap = false): Promise<SimulatedRank> {
  const world = meshWorld(sizes);
  validateMesh(sizes, world, workload);
  if (!(Number.isInteger(rank) && rank >= 0 && rank < world)) {
    throw new Error(`--rank ${rank} is not a rank of the mesh pp${sizes.pp}·dp${sizes.dp}·cp${sizes.cp}·ep${sizes.ep} (world ${world}); choose 0 … ${world - 1}`);
  }
  const comm = new LoopbackCommunicator(world, rank, { overlap, ...(timer ? { timer } : {}) });
  const mesh = new Mesh(sizes, rank);
  const groups = await buildMeshGroups(comm, mesh);
  return {
    comm, mesh, groups, rank, world, localRank: 0,
    launch: { rank, world, localRank: 0, localWorld: world, masterAddr: DEFAULT_MASTER_ADDR, masterPort: DEFAULT_MASTER_PORT, source: 'none' },
    close: () => { comm.close(); return Promise.resolve(); },
  };
}

/**
 * The pipeline rank whose virtual stages cost the most training FLOPs per token (the stage
 * that sets a balanced pipeline's pace; the earlier rank on a tie), as the world rank with
 * dp = cp = ep = 0.
 */
export function heaviestRank(c: DeepseekV2Config, sizes: MeshSizes, kind: ScheduleKind, seqLen: number, override?: readonly number[]): number {
  const stages = splitStages(c, virtualStages(kind, sizes.pp), seqLen, override);
  let best = 0, bestCost = -1;
  for (let r = 0; r < sizes.pp; r++) {
    const cost = stagesOfRank(kind, sizes.pp, r).reduce((s, v) => s + stages[v]!.flopsPerToken, 0);
    if (cost > bestCost) { best = r; bestCost = cost; }
  }
  return meshRankOf(sizes, { pp: best, dp: 0, cp: 0, ep: 0 });
}
