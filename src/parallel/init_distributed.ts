// Start-up of a parallel run, called once by every rank before training: read the launch
// contract, check the mesh against it and the workload, meet the other ranks at the rendezvous
// store, build the world communicator (NCCL on CUDA, TCP on CPU) and the mesh's groups.
// Without a launcher (no RANK/WORLD_SIZE or SLURM variables) it is a world of one process with
// no rendezvous at all.
import type { Backend } from '../backend/backend.js';
import type { Communicator } from './communicator.js';
import { CpuCommunicator } from './cpu/cpu_communicator.js';
import { applyLaunchEnv, type LaunchEnv } from './launch_env.js';
import { LocalCommunicator } from './local_communicator.js';
import { Mesh, validateMesh, type ParallelConfig } from './mesh.js';
import { StoreClient } from './rendezvous/store_client.js';
import { startStoreServer, type StoreServer } from './rendezvous/store_server.js';

/** The communicators of the mesh's groups (see MeshGroupRanks for what each is for). */
export interface MeshGroups {
  pp: Communicator;
  dp: Communicator;
  cp: Communicator;
  ep: Communicator;
  /** dp·cp·ep: dense parameters are sharded over it. */
  denseShard: Communicator;
  /** dp·cp: expert parameters are sharded over it. */
  expertShard: Communicator;
  /** dp·ep: the ranks that read different micro-batches. */
  data: Communicator;
}

export interface Distributed {
  /** The world communicator. */
  comm: Communicator;
  mesh: Mesh;
  groups: MeshGroups;
  rank: number;
  /** World size. */
  world: number;
  /** This rank's device ordinal. */
  localRank: number;
  launch: LaunchEnv;
  /** Ends the run's communication in order (every rank calls it after its last collective). */
  close(): Promise<void>;
}

/** What initDistributed reads from the training config (TrainConfig has these fields). */
export interface DistributedConfig {
  /** The mesh sizes and timeout; the schedule (checked when pp > 1) is optional. */
  parallel: Omit<ParallelConfig, 'schedule' | 'stages' | 'hold_weights' | 'hold_grads'> & Partial<Pick<ParallelConfig, 'schedule'>>;
  global_batch_size: number;
  micro_batch_size: number;
  /** Checked against cp when given. */
  seq_len?: number;
}

/** What initDistributed reads from the model config (DeepseekV2Config has these fields). */
export interface DistributedModel {
  num_hidden_layers: number;
  n_routed_experts: number;
}

/** Makes the mesh's groups, in one order on every rank (groups of one kind partition the world). */
export async function buildMeshGroups(world: Communicator, mesh: Mesh): Promise<MeshGroups> {
  const r = mesh.groups();
  return {
    pp: await world.group(r.pp, 'pp'),
    dp: await world.group(r.dp, 'dp'),
    cp: await world.group(r.cp, 'cp'),
    ep: await world.group(r.ep, 'ep'),
    denseShard: await world.group(r.denseShard, 'dp·cp·ep'),
    expertShard: await world.group(r.expertShard, 'dp·cp'),
    data: await world.group(r.data, 'dp·ep'),
  };
}

async function worldCommunicator(backend: Backend, store: StoreClient, launch: LaunchEnv, timeoutMs: number): Promise<Communicator> {
  switch (backend.kind) {
    case 'cpu':
      if (launch.localWorld !== launch.world) {
        throw new Error(`the CPU communicator connects processes of one machine, but WORLD_SIZE ${launch.world} spans machines (LOCAL_WORLD_SIZE ${launch.localWorld}); run on one machine, or use --device cuda (NCCL) across machines`);
      }
      return CpuCommunicator.create(store, launch.rank, launch.world, timeoutMs);
    case 'cuda': {
      // Loaded here so that CPU runs never load the CUDA bindings.
      const { NcclCommunicator } = await import('./nccl_communicator.js');
      return NcclCommunicator.create(store, launch.rank, launch.world, backend);
    }
    default:
      return backend.kind satisfies never;
  }
}

/**
 * Every rank calls this once before training. Throws one line naming the problem and the fix
 * for a mesh that does not fit, an unreachable rendezvous, or a port in use.
 */
export async function initDistributed(cfg: DistributedConfig, model: DistributedModel, backend: Backend, env: NodeJS.ProcessEnv = process.env): Promise<Distributed> {
  const launch = applyLaunchEnv(env);
  const sizes = { pp: cfg.parallel.pp, dp: cfg.parallel.dp, cp: cfg.parallel.cp, ep: cfg.parallel.ep };
  validateMesh(sizes, launch.world, {
    numLayers: model.num_hidden_layers, nRoutedExperts: model.n_routed_experts,
    globalBatch: cfg.global_batch_size, microBatch: cfg.micro_batch_size,
    ...(cfg.seq_len !== undefined ? { seqLen: cfg.seq_len } : {}), ...(cfg.parallel.schedule ? { schedule: cfg.parallel.schedule } : {}),
  });
  const mesh = new Mesh(sizes, launch.rank);
  const base = { mesh, rank: launch.rank, world: launch.world, localRank: launch.localRank, launch };

  if (launch.source === 'none') {
    const comm = new LocalCommunicator();
    return { ...base, comm, groups: await buildMeshGroups(comm, mesh), close: () => Promise.resolve() };
  }

  const timeoutMs = cfg.parallel.collective_timeout_sec * 1000;
  let server: StoreServer | null = null;
  if (launch.rank === 0) server = await startStoreServer({ host: launch.masterAddr, port: launch.masterPort, world: launch.world });
  let store: StoreClient;
  try {
    store = await StoreClient.connect({ host: launch.masterAddr, port: launch.masterPort, rank: launch.rank, world: launch.world, timeoutMs });
  } catch (e) {
    await server?.close(0);
    throw e;
  }
  const comm = await worldCommunicator(backend, store, launch, timeoutMs);
  const groups = await buildMeshGroups(comm, mesh);
  return {
    ...base, comm, groups,
    close: async () => {
      comm.close();
      // Rank 0 serves the store: it stops once every rank has passed the barrier and hung up.
      await store.barrier('close');
      store.close();
      await server?.close(timeoutMs);
    },
  };
}
