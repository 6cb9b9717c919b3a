// `moetrain launch`: starts this node's ranks as child processes with torchrun's environment
// contract, passes their output through (rank 0's lines unchanged, other ranks' lines prefixed
// with "[rank R] "), and takes the job down when one rank fails: that rank's last error lines
// are printed with its rank, the others get SIGTERM and, after a grace period, SIGKILL.
// SIGINT or SIGTERM to the launcher is passed on to every rank (a training run finishes its step,
// checkpoints and exits 130 / 143, which is then a stop, not a failure); a second one SIGKILLs
// the ranks at once.
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { LOST_PEER } from './cpu/peer_links.js';

export interface LaunchOptions {
  /** The program each rank runs: the executable and its arguments. */
  program: readonly string[];
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  /** Base environment of the children (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** From a rank's failure to SIGKILL of the ranks that have not exited (default 3 s). */
  graceMs?: number;
  /** Where the children's lines and the launcher's own messages go (default: this process's streams). */
  stdout?: (line: string) => void;
  stderr?: (line: string) => void;
}

/** Lines kept per rank for the failure report. */
const TAIL_LINES = 15;

type ExitStatus = { code: number | null; signal: NodeJS.Signals | null };

interface Rank {
  rank: number;
  child: ChildProcess;
  tail: string[];
  /** Resolves when the process has exited and its output has been read to the end. */
  closed: Promise<ExitStatus>;
  status: ExitStatus | null;
}

/**
 * The rank to blame: the first one seen failing, unless its error says it lost its connection
 * to a rank that did not succeed either (several exits can be seen at once, not in the order
 * they happened, and a rank that is still exiting may receive the SIGTERM meant for the others).
 */
function rankToBlame(first: Rank, ranks: readonly Rank[]): Rank {
  let blamed = first;
  for (let hops = 0; hops < ranks.length; hops++) {
    const m = blamed.tail.map((l) => LOST_PEER.exec(l)).find((x) => x !== null);
    const peer = m ? ranks.find((r) => r.rank === Number(m[1])) : undefined;
    if (!peer || !peer.status || (peer.status.code === 0 && peer.status.signal === null)) return blamed;
    blamed = peer;
  }
  return blamed;
}

function pipeLines(stream: Readable, onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: stream, crlfDelay: Infinity });
    rl.on('line', onLine);
    rl.on('close', resolve);
  });
}

/** The children's environment: torchrun's contract; NCCL_NVLS_ENABLE stays 0 unless set. */
export function rankEnv(o: LaunchOptions, localRank: number): NodeJS.ProcessEnv {
  const base = o.env ?? process.env;
  return {
    ...base,
    RANK: String(o.nodeRank * o.nprocPerNode + localRank),
    LOCAL_RANK: String(localRank),
    WORLD_SIZE: String(o.nnodes * o.nprocPerNode),
    LOCAL_WORLD_SIZE: String(o.nprocPerNode),
    MASTER_ADDR: o.masterAddr,
    MASTER_PORT: String(o.masterPort),
    NCCL_NVLS_ENABLE: base.NCCL_NVLS_ENABLE ?? '0',
  };
}

/** Runs the ranks to the end; resolves with the exit status for the launcher (0: all ranks succeeded). */
export async function launchRanks(o: LaunchOptions): Promise<number> {
  const out = o.stdout ?? ((l: string) => { process.stdout.write(`${l}\n`); });
  const err = o.stderr ?? ((l: string) => { process.stderr.write(`${l}\n`); });
  const graceMs = o.graceMs ?? 3000;
  const [exe, ...args] = o.program;
  if (!exe) throw new Error('internal: launchRanks without a program');

  let failed: Rank | null = null;
  let killTimer: NodeJS.Timeout | null = null;
  const ranks: Rank[] = [];
  /** The signal passed on to the ranks, if any, and whether a second one killed them. */
  let forwarded: NodeJS.Signals | null = null;
  let killedOnSignal = false;
  /** A rank's exit status after it stopped on that signal: 128 + its number. */
  const stopCode = (): number | null => (forwarded === null ? null : 128 + os.constants.signals[forwarded as 'SIGINT' | 'SIGTERM']);

  const stopOthers = (): void => {
    for (const r of ranks) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGTERM');
    killTimer = setTimeout(() => {
      for (const r of ranks) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
    }, graceMs);
  };

  for (let local = 0; local < o.nprocPerNode; local++) {
    const rank = o.nodeRank * o.nprocPerNode + local;
    const child = spawn(exe, args, { env: rankEnv(o, local), stdio: ['ignore', 'pipe', 'pipe'] });
    const r: Rank = { rank, child, tail: [], closed: Promise.resolve({ code: null, signal: null }), status: null };
    const prefix = rank === 0 ? '' : `[rank ${rank}] `;
    const keep = (line: string): void => { r.tail.push(line); if (r.tail.length > TAIL_LINES) r.tail.shift(); };
    const piped = Promise.all([
      pipeLines(child.stdout!, (line) => out(prefix + line)),
      pipeLines(child.stderr!, (line) => { keep(line); err(prefix + line); }),
    ]);
    const exited = new Promise<ExitStatus>((resolve) => {
      child.on('error', (e) => { keep(`cannot start ${exe}: ${e.message}`); resolve({ code: 127, signal: null }); });
      child.on('exit', (code, signal) => resolve({ code, signal }));
    });
    r.closed = exited.then(async (status) => {
      r.status = status;
      if (!failed && (status.code !== 0 || status.signal !== null) && !(status.signal === null && status.code === stopCode())) {
        failed = r;
        stopOthers();
      }
      await piped;
      return status;
    });
    ranks.push(r);
  }

  const onSignal = (signal: NodeJS.Signals): void => {
    const again = forwarded !== null;
    forwarded ??= signal;
    killedOnSignal ||= again;
    err(again ? `moetrain launch: ${signal} again, killing the ranks` : `moetrain launch: ${signal}, passed on to the ranks (again to kill them at once)`);
    for (const r of ranks) r.child.kill(again ? 'SIGKILL' : signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await Promise.all(ranks.map((r) => r.closed));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (killTimer) clearTimeout(killTimer);
  }

  const first = failed as Rank | null;
  if (killedOnSignal) {
    err(`moetrain launch: the ranks were killed on the second ${forwarded}`);
    return stopCode()!;
  }
  if (!first) {
    const code = stopCode();
    if (code === null || !ranks.some((r) => r.status?.code === code)) return 0;
    err(`moetrain launch: the ranks stopped on ${forwarded} (exit status ${code})`);
    return code;
  }
  const f = rankToBlame(first, ranks);
  const { code, signal } = f.status!;
  const how = signal !== null ? `ended by ${signal}` : `exit status ${code}`;
  err(`moetrain launch: rank ${f.rank} failed (${how}); the other ranks were stopped. Its last error lines:`);
  for (const line of f.tail) err(`[rank ${f.rank}] ${line}`);
  if (f.tail.length === 0) err(`[rank ${f.rank}] (nothing on stderr)`);
  return code !== null && code !== 0 ? code : 1;
}
