// The package root (the folder with package.json), found from this file's own location, so it
// is the same from src/ (tsx, tests) and from dist/src/ (the built CLI).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`internal: no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}
