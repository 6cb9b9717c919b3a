// Leak checking: a training step must leave the backend's live bytes exactly where the previous
// step left them. The first call is a warm-up (caches such as the model's RoPE tables are created
// on first use and live on), so the reference is taken after it.
import type { Backend } from '../../src/backend/backend.js';

/**
 * Runs fn once to warm up, then `steps` more times; throws if the live bytes after any later step
 * differ from those after the warm-up. Returns the live bytes after each call (warm-up first).
 */
export function assertNoLeak(backend: Backend, fn: (step: number) => void, steps: number): number[] {
  const live: number[] = [];
  fn(0);
  live.push(backend.memoryStats().liveBytes);
  for (let s = 1; s <= steps; s++) {
    fn(s);
    live.push(backend.memoryStats().liveBytes);
    if (live[s] !== live[0]) {
      throw new Error(`leak: live bytes after step ${s} are ${live[s]}, after the warm-up step ${live[0]} (${live[s]! - live[0]!} bytes more)`);
    }
  }
  return live;
}
