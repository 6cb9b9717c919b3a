// Failures end the whole job quickly with the cause on screen: a rank that throws (the others
// waiting outside a collective, inside one, or ignoring SIGTERM), a collective that times out,
// an unreachable rendezvous, a rendezvous port in use, a mesh that does not fit the world, and
// bad launcher arguments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'parallel_rank.js');

function launch(nproc: number, args: string[]) {
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', String(nproc), '--', rankScript, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr, end: Date.now() };
}

/** One rank started directly (no launcher) with its own environment. */
function rankAlone(env: Record<string, string>, args: string[]) {
  const r = spawnSync(process.execPath, [rankScript, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A port that is listening, held by this process until release() (a stale rendezvous). */
function holdPort(): Promise<{ port: number; release: () => void }> {
  return new Promise((resolve) => {
    const server = net.createServer((s) => s.destroy());
    server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as net.AddressInfo).port, release: () => server.close() }));
  });
}

function failedAt(err: string): number {
  const m = /failing at (\d+)/.exec(err);
  assert.ok(m, `the failing rank did not report its time:\n${err}`);
  return Number(m[1]);
}

function expectRankError(r: { code: number | null; err: string }, rank: number): void {
  assert.notEqual(r.code, 0);
  assert.match(r.err, new RegExp(`moetrain launch: rank ${rank} failed \\((exit status 1|ended by SIGTERM)\\); the other ranks were stopped\\. Its last error lines:\\n(\\[rank ${rank}\\] .*\\n)*\\[rank ${rank}\\] moetrain: error: planted failure on rank ${rank}\\n`));
}

test('a rank that throws: the others (outside any collective) are stopped within 10 s and its error is shown', () => {
  const r = launch(4, ['fail-hang', '2']);
  expectRankError(r, 2);
  const seconds = (r.end - failedAt(r.err)) / 1000;
  assert.ok(seconds < 10, `the job took ${seconds.toFixed(1)} s to end after rank 2 failed`);
});

test('a rank that throws while the others wait in an all-reduce: they see the lost peer at once', () => {
  const r = launch(3, ['fail-collective', '1']);
  expectRankError(r, 1);
  assert.ok((r.end - failedAt(r.err)) / 1000 < 10);
});

test('ranks that ignore SIGTERM are killed after the grace period, still within 10 s', () => {
  const r = launch(2, ['fail-stubborn', '0']);
  expectRankError(r, 0);
  const seconds = (r.end - failedAt(r.err)) / 1000;
  assert.ok(seconds < 10, `the job took ${seconds.toFixed(1)} s to end after rank 0 failed`);
});

test('a collective that waits past the timeout fails with the call, the group and the fix', () => {
  const started = Date.now();
  const r = launch(2, ['timeout']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /moetrain launch: rank 0 failed \(exit status 1\)/);
  assert.match(r.err, /moetrain: error: allReduce on group world \(world ranks 0,1\) did not finish within 1 s: another rank of the group did not reach it .*raise --parallel\.collective_timeout_sec/);
  assert.ok(Date.now() - started < 5000 + 4000, 'rank 1 arrives after 5 s; the timeout and the launcher end the job before that');
});

test('an unreachable rendezvous is one line naming MASTER_ADDR:MASTER_PORT', async () => {
  const { port, release } = await holdPort();
  release(); // now nobody listens there
  await new Promise((r) => setTimeout(r, 50));
  const r = rankAlone({ RANK: '1', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) }, ['init', '2', '1', '1']);
  assert.equal(r.code, 1);
  assert.equal(r.err.trim(), `moetrain: error: rank 1 could not reach the rendezvous at 127.0.0.1:${port} within 1 s (ECONNREFUSED); check that rank 0 is running, that MASTER_ADDR and MASTER_PORT are the same on every rank and reachable from this machine, or raise --parallel.collective_timeout_sec`);
});

test('a rendezvous port in use is one line with the fix', async () => {
  const { port, release } = await holdPort();
  try {
    const r = rankAlone({ RANK: '0', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) }, ['init', '2', '1', '1']);
    assert.equal(r.code, 1);
    assert.equal(r.err.trim(), `moetrain: error: rank 0 cannot serve the rendezvous at 127.0.0.1:${port}: the port is in use (another job, or a stale one still holding it); pass another --master-port (MASTER_PORT) or stop the old job`);
  } finally {
    release();
  }
});

test('a mesh that does not match the world: every rank exits with the equation', () => {
  const r = launch(3, ['init', '2', '2']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /\[rank \d\] moetrain: error: pp·dp·cp·ep = 1·2·1·2 = 4 ≠ WORLD_SIZE 3; choose --parallel\.pp\/dp\/cp\/ep whose product is 3, or launch 4 processes/);
});

test('bad launcher arguments get one line each', () => {
  const run = (args: string[]) => spawnSync(process.execPath, [cli, 'launch', ...args], { encoding: 'utf8' });
  const cases: [string[], RegExp][] = [
    [['--nproc-per-node', '2'], /launch: nothing to run; put a moetrain command after "--"/],
    [['--', 'train'], /launch: --nproc-per-node is required/],
    [['--nproc-per-node', '0', '--', 'train'], /--nproc-per-node must be an integer ≥ 1, got "0"/],
    [['--nproc-pernode', '2', '--', 'train'], /unknown option --nproc-pernode for moetrain launch \(did you mean --nproc-per-node\?\)/],
    [['--nproc-per-node', '2', '--nnodes', '2', '--', 'train'], /--nnodes 2 needs --master-addr with the address of node 0/],
    [['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '2', '--master-addr', '10.1.1.1', '--', 'train'], /--node-rank 2 must be below --nnodes 2/],
  ];
  for (const [args, want] of cases) {
    const r = run(args);
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, want);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});
