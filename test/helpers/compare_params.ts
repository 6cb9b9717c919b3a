// Master weights of two runs compared the way Adam's updates allow (test/parallel_*.test.ts):
// per tensor ‖Δ‖/‖w‖ (the largest, and in which tensor) and the largest element difference.
import assert from 'node:assert/strict';

/** Per tensor ‖Δ‖/‖w‖ (the largest, and where) and the largest element difference, over master weights. */
export function compareParams(want: Map<string, Float32Array>, got: Map<string, Float32Array>): { relL2: number; maxAbs: number; worst: string } {
  let relL2 = 0, maxAbs = 0, worst = '';
  for (const [name, w] of want) {
    if (name.startsWith('exp_avg')) continue;
    const v = got.get(name);
    assert.ok(v && v.length === w.length, `${name}: present with ${w.length} elements`);
    let d2 = 0, w2 = 0;
    for (let i = 0; i < w.length; i++) {
      const d = v[i]! - w[i]!;
      d2 += d * d; w2 += w[i]! * w[i]!;
      maxAbs = Math.max(maxAbs, Math.abs(d));
    }
    const rel = Math.sqrt(d2 / w2);
    if (rel > relL2) { relL2 = rel; worst = name; }
  }
  return { relL2, maxAbs, worst };
}
