// Where this process sits in a job: torchrun's environment contract (RANK, LOCAL_RANK,
// WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), set by `moetrain launch` or any other
// launcher; under SLURM, when `srun` starts the ranks directly, the same values come from the
// SLURM_* variables. No variables at all means a single process (world 1).

export interface LaunchEnv {
  /** This process's rank in the whole job, 0 … world−1. */
  rank: number;
  world: number;
  /** Rank among the processes of this machine; it is the GPU ordinal. */
  localRank: number;
  /** Processes on this machine. */
  localWorld: number;
  /** Where rank 0 serves the rendezvous store. */
  masterAddr: string;
  masterPort: number;
  /** Which contract the values came from ('none': no launcher, a single process). */
  source: 'torchrun' | 'slurm' | 'none';
}

export const DEFAULT_MASTER_ADDR = '127.0.0.1';
export const DEFAULT_MASTER_PORT = 29500;

function intVar(env: NodeJS.ProcessEnv, name: string, min: number): number | undefined {
  const text = env[name];
  if (text === undefined || text.trim() === '') return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name}=${text} is not an integer ≥ ${min}; fix the launcher's environment (or run through moetrain launch)`);
  return n;
}

function portVar(env: NodeJS.ProcessEnv): number {
  const p = intVar(env, 'MASTER_PORT', 1) ?? DEFAULT_MASTER_PORT;
  if (p > 65535) throw new Error(`MASTER_PORT=${p} is not a TCP port; set it to a free port in 1024-65535`);
  return p;
}

/** The first host of a SLURM node list: "gpu[07-09,12],cpu1" → "gpu07". */
export function firstSlurmHost(nodelist: string): string {
  const text = nodelist.trim();
  const bracket = text.indexOf('[');
  const comma = text.indexOf(',');
  if (bracket < 0 || (comma >= 0 && comma < bracket)) return comma < 0 ? text : text.slice(0, comma);
  const prefix = text.slice(0, bracket);
  const first = text.slice(bracket + 1).split(/[,\]]/)[0]!;
  return prefix + first.split('-')[0]!;
}

/** Tasks on node `node` from SLURM's compressed per-node counts: "4(x2),3" → [4, 4, 3]. */
export function slurmTasksOnNode(tasksPerNode: string, node: number): number | undefined {
  const counts: number[] = [];
  for (const part of tasksPerNode.split(',')) {
    const m = /^\s*(\d+)(?:\(x(\d+)\))?\s*$/.exec(part);
    if (!m) return undefined;
    for (let i = 0; i < Number(m[2] ?? 1); i++) counts.push(Number(m[1]));
  }
  return counts[node];
}

function check(e: LaunchEnv, what: string): LaunchEnv {
  if (e.rank >= e.world) throw new Error(`${what}: rank ${e.rank} is outside a world of ${e.world} ranks; every rank needs the same world size and a rank below it`);
  if (e.localRank >= e.localWorld) throw new Error(`${what}: local rank ${e.localRank} is outside the ${e.localWorld} processes of this machine`);
  if (e.localWorld > e.world) throw new Error(`${what}: ${e.localWorld} processes on this machine but a world of only ${e.world}`);
  return e;
}

/** Reads the launch contract from the environment (see the file header for the precedence). */
export function readLaunchEnv(env: NodeJS.ProcessEnv = process.env): LaunchEnv {
  const masterAddr = env.MASTER_ADDR && env.MASTER_ADDR.trim() !== '' ? env.MASTER_ADDR.trim() : undefined;
  if (env.RANK !== undefined || env.WORLD_SIZE !== undefined) {
    const rank = intVar(env, 'RANK', 0);
    const world = intVar(env, 'WORLD_SIZE', 1);
    if (rank === undefined || world === undefined) {
      throw new Error(`RANK and WORLD_SIZE must be set together (RANK=${env.RANK ?? 'unset'}, WORLD_SIZE=${env.WORLD_SIZE ?? 'unset'}); start the ranks with moetrain launch`);
    }
    const localWorld = intVar(env, 'LOCAL_WORLD_SIZE', 1) ?? world;
    const localRank = intVar(env, 'LOCAL_RANK', 0) ?? rank % localWorld;
    return check({ rank, world, localRank, localWorld, masterAddr: masterAddr ?? DEFAULT_MASTER_ADDR, masterPort: portVar(env), source: 'torchrun' }, 'RANK/WORLD_SIZE');
  }
  const slurmWorld = intVar(env, 'SLURM_STEP_NUM_TASKS', 1) ?? intVar(env, 'SLURM_NTASKS', 1);
  const slurmRank = intVar(env, 'SLURM_PROCID', 0);
  if (slurmRank !== undefined && slurmWorld !== undefined) {
    const node = intVar(env, 'SLURM_NODEID', 0) ?? 0;
    const perNode = env.SLURM_STEP_TASKS_PER_NODE ?? env.SLURM_TASKS_PER_NODE;
    const localWorld = (perNode ? slurmTasksOnNode(perNode, node) : undefined) ?? intVar(env, 'SLURM_NTASKS_PER_NODE', 1) ?? slurmWorld;
    const localRank = intVar(env, 'SLURM_LOCALID', 0) ?? slurmRank % localWorld;
    const nodelist = env.SLURM_STEP_NODELIST ?? env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
    const addr = masterAddr ?? (nodelist ? firstSlurmHost(nodelist) : DEFAULT_MASTER_ADDR);
    return check({ rank: slurmRank, world: slurmWorld, localRank, localWorld, masterAddr: addr, masterPort: portVar(env), source: 'slurm' }, 'SLURM_PROCID/SLURM_NTASKS');
  }
  return { rank: 0, world: 1, localRank: 0, localWorld: 1, masterAddr: masterAddr ?? DEFAULT_MASTER_ADDR, masterPort: portVar(env), source: 'none' };
}

/**
 * Reads the launch contract and, when it came from SLURM, writes the torchrun variables into
 * `env`, so every later reader (the CUDA context picks its device from LOCAL_RANK) sees one
 * contract. Call it before creating the backend.
 */
export function applyLaunchEnv(env: NodeJS.ProcessEnv = process.env): LaunchEnv {
  const e = readLaunchEnv(env);
  if (e.source === 'slurm') {
    env.RANK = String(e.rank);
    env.WORLD_SIZE = String(e.world);
    env.LOCAL_RANK = String(e.localRank);
    env.LOCAL_WORLD_SIZE = String(e.localWorld);
    env.MASTER_ADDR = e.masterAddr;
    env.MASTER_PORT = String(e.masterPort);
  }
  return e;
}

/** This rank's device: its LOCAL_RANK (SLURM_LOCALID under srun), 0 for a single process. */
export function localRank(env: NodeJS.ProcessEnv = process.env): number {
  return readLaunchEnv(env).localRank;
}
