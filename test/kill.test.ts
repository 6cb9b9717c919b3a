// The kill test in CI: 5 SIGKILLs at random points of a CPU training run (start-up, steps,
// checkpoint writer stages), a resume after each; the run ends as one that was never killed, bit
// for bit. The 20-point version: node dist/test/kill_harness.js 20
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { killHarness } from './kill_harness.js';

test('5 SIGKILLs at random points: every resume from the newest complete checkpoint, final losses and weights bit-exact', async () => {
  const lines: string[] = [];
  const r = await killHarness(5, 7, (l) => lines.push(l));
  assert.deepEqual(r.mismatches, [], lines.join('\n'));
  const kills = Object.entries(r.kills).filter(([k]) => !k.startsWith('none')).reduce((a, [, n]) => a + n, 0);
  assert.equal(kills, 5, lines.join('\n'));
  assert.ok(r.resumesChecked >= 4, `only ${r.resumesChecked} resumes were checked:\n${lines.join('\n')}`);
});
