// `moetrain launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]
// -- <command and options>`: runs N ranks of a moetrain command on this node (or of a .js file
// run with node, for tests and tools). Under `srun`, one launcher per node takes the node count,
// the node's rank and node 0's address from SLURM when they are not given.
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import type { CommandSpec, ParsedArgs } from './args.js';
import { launchRanks } from '../parallel/launcher.js';
import { DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT, firstSlurmHost } from '../parallel/launch_env.js';

export const LAUNCH_COMMAND: CommandSpec = {
  name: 'launch',
  summary: 'start N ranks of a moetrain command on this node, with torchrun\'s environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)',
  positionals: [],
  passThrough: 'COMMAND ...',
  options: [
    { name: 'nproc_per_node', value: 'N', help: '(required) processes on this node (one per GPU; each uses the GPU of its LOCAL_RANK)' },
    { name: 'nnodes', value: 'M', default: '1 (under srun: SLURM_STEP_NUM_NODES)', help: 'nodes in the job' },
    { name: 'node_rank', value: 'R', default: '0 (under srun: SLURM_NODEID)', help: 'this node\'s index' },
    { name: 'master_addr', value: 'ADDR', default: '127.0.0.1 (MASTER_ADDR; under srun the first node)', help: 'address of node 0, where rank 0 serves the rendezvous' },
    { name: 'master_port', value: 'PORT', default: 'a free port on one node (MASTER_PORT)', help: 'TCP port of the rendezvous' },
  ],
  notes: [
    'COMMAND is a moetrain command with its options (e.g. train --parallel.dp 2) or a .js file run with node.',
    'If a rank fails, the others are stopped within 10 s and that rank\'s last error lines are printed.',
  ],
};

const EXAMPLE = 'moetrain launch --nproc-per-node 2 -- train --parallel.dp 2';

function intOption(flags: Record<string, string | undefined>, name: string, min: number): number | undefined {
  const text = flags[name];
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got "${text}"`);
  return n;
}

function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const isLoopback = (addr: string): boolean => addr === 'localhost' || addr.startsWith('127.') || addr === '::1';

export async function launchCommand(args: ParsedArgs): Promise<void> {
  const command = args.rest;
  // Kebab-case keys: the option names of this file's messages.
  const flags: Record<string, string> = {};
  for (const [k, v] of Object.entries(args.flags)) flags[k.replace(/_/g, '-')] = v;
  if (command.length === 0) throw new Error(`launch: nothing to run; put a moetrain command after "--", e.g. ${EXAMPLE}`);
  const nprocPerNode = intOption(flags, 'nproc-per-node', 1);
  if (nprocPerNode === undefined) throw new Error(`launch: --nproc-per-node is required (processes on this node, one per GPU), e.g. ${EXAMPLE}`);

  // Under srun (one launcher per node) SLURM knows the nodes; outside it, one node.
  const env = process.env;
  const underSrun = env.SLURM_STEP_NUM_NODES !== undefined && env.SLURM_NODEID !== undefined;
  const nnodes = intOption(flags, 'nnodes', 1) ?? (underSrun ? Number(env.SLURM_STEP_NUM_NODES) : 1);
  const nodeRank = intOption(flags, 'node-rank', 0) ?? (underSrun ? Number(env.SLURM_NODEID) : 0);
  if (nodeRank >= nnodes) throw new Error(`launch: --node-rank ${nodeRank} must be below --nnodes ${nnodes}`);
  const slurmHost = underSrun && env.SLURM_STEP_NODELIST ? firstSlurmHost(env.SLURM_STEP_NODELIST) : undefined;
  const masterAddr = flags['master-addr'] ?? env.MASTER_ADDR ?? slurmHost ?? DEFAULT_MASTER_ADDR;
  if (nnodes > 1 && isLoopback(masterAddr)) {
    throw new Error(`launch: --nnodes ${nnodes} needs --master-addr with the address of node 0 (the one with --node-rank 0), reachable from every node; ${masterAddr} is this machine only`);
  }
  const envPort = env.MASTER_PORT !== undefined && env.MASTER_PORT !== '' ? Number(env.MASTER_PORT) : undefined;
  if (envPort !== undefined && !Number.isInteger(envPort)) throw new Error(`launch: MASTER_PORT=${env.MASTER_PORT} is not a port; unset it or pass --master-port`);
  let masterPort = intOption(flags, 'master-port', 1) ?? envPort;
  if (masterPort !== undefined && masterPort > 65535) throw new Error(`launch: --master-port ${masterPort} is not a TCP port; use 1024-65535`);
  // One node: a free port, so that two jobs on one machine never meet at the same rendezvous.
  masterPort ??= nnodes === 1 ? await freeLoopbackPort() : DEFAULT_MASTER_PORT;

  const cli = fileURLToPath(new URL('./main.js', import.meta.url));
  const script = /\.(c|m)?js$/.test(command[0]!);
  const program = [process.execPath, ...process.execArgv, ...(script ? [] : [cli]), ...command];
  const world = nnodes * nprocPerNode;
  const first = nodeRank * nprocPerNode;
  console.error(`moetrain launch: ranks ${first}-${first + nprocPerNode - 1} of ${world} on this node, rendezvous at ${masterAddr}:${masterPort}`);
  const code = await launchRanks({ program, nprocPerNode, nnodes, nodeRank, masterAddr, masterPort });
  if (code !== 0) process.exitCode = code;
}
