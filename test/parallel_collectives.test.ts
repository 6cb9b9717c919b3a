// The CPU collectives in real processes started by `moetrain launch`: every collective on f32,
// bf16 and i32 against host-computed values (odd sizes, sizes below the rank count, an 8 MB
// all-reduce, all-to-all with uneven and zero counts, point to point), the mesh's groups and a
// hand-made group. Each rank runs test/helpers/parallel_rank.ts and prints "rank R ok N checks".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'parallel_rank.js');

function launch(nproc: number, args: string[]) {
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', String(nproc), '--', rankScript, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function expectAllRanksOk(nproc: number, r: { code: number | null; out: string; err: string }): void {
  assert.equal(r.code, 0, r.err);
  for (let rank = 0; rank < nproc; rank++) {
    // Rank 0's lines pass through unchanged; the others carry their rank.
    const prefix = rank === 0 ? '' : `\\[rank ${rank}\\] `;
    assert.match(r.out, new RegExp(`^${prefix}rank ${rank} ok \\d+ checks$`, 'm'));
  }
  assert.match(r.err, new RegExp(`moetrain launch: ranks 0-${nproc - 1} of ${nproc} on this node, rendezvous at 127\\.0\\.0\\.1:\\d+`));
}

test('2 processes (dp2): every collective matches the host computation bit for bit', () => {
  expectAllRanksOk(2, launch(2, ['collectives', '2', '1']));
});

test('4 processes (dp2·ep2): every collective, the mesh groups and a hand-made group', () => {
  expectAllRanksOk(4, launch(4, ['collectives', '2', '2']));
});

test('1 process through the launcher: the same calls with no peers', () => {
  expectAllRanksOk(1, launch(1, ['collectives', '1', '1']));
});
