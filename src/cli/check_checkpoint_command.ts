// `moetrain check-checkpoint DIR`: verifies a checkpoint folder as resume would, and more: the
// manifest, every file's size and checksum, and every value finite. DIR may also be a run folder
// or its checkpoints/ folder: then each checkpoint there is checked. Exit status 0 when every
// checkpoint checked is intact, 1 otherwise.
import fs from 'node:fs';
import path from 'node:path';
import type { CommandSpec } from './args.js';
import { listCheckpoints } from '../train/checkpoint.js';
import { CheckpointDamage, INDEX_FILE, LEGACY_MODEL_FILE, MANIFEST_FILE, STATE_FILE } from '../train/checkpoint_format.js';
import { verifyCheckpoint, verifyCheckpointValues } from '../train/checkpoint_manifest.js';

export const CHECK_CHECKPOINT_COMMAND: CommandSpec = {
  name: 'check-checkpoint',
  summary: 'Verify a checkpoint as resume would, and every value in it: the manifest, each file\'s size and XXH32 checksum, and no NaN or infinity. Exit status 0 when every checkpoint checked is intact, 1 otherwise.',
  positionals: [{ name: 'DIR', help: 'a checkpoint folder (runs/x/checkpoints/step-00000100), or a run folder or its checkpoints/ folder to check each checkpoint there', required: true }],
  options: [],
};

const USAGE = 'usage: moetrain check-checkpoint DIR (moetrain check-checkpoint --help)';

/** The checkpoint folders DIR names: itself, or those of its checkpoints/ folder, newest first. */
function foldersOf(dir: string): string[] {
  if (!fs.existsSync(dir)) throw new Error(`${dir} does not exist; ${USAGE}`);
  if ([MANIFEST_FILE, INDEX_FILE, STATE_FILE, LEGACY_MODEL_FILE].some((f) => fs.existsSync(path.join(dir, f)))) return [dir];
  for (const d of [path.join(dir, 'checkpoints'), dir]) {
    const found = listCheckpoints(d);
    if (found.length > 0) return found;
  }
  return [dir];
}

/** One line for one checkpoint; false when it is not intact. */
function checkOne(folder: string): boolean {
  try {
    const v = verifyCheckpoint(folder);
    verifyCheckpointValues(folder);
    const what = v.legacy ? 'older format without checksums: headers, sizes and values checked' : 'sizes, checksums and values checked';
    console.log(`moetrain: ${folder}: intact (step ${v.state.step}, ${v.files} files, ${(v.bytes / 1e6).toFixed(1)} MB; ${what})`);
    return true;
  } catch (e) {
    if (!(e instanceof CheckpointDamage)) throw e;
    console.log(`moetrain: ${folder}: ${e.kind}: ${e.reason}`);
    return false;
  }
}

export function checkCheckpointCommand(dir: string): void {
  const folders = foldersOf(dir);
  const bad = folders.filter((f) => !checkOne(f)).length;
  if (bad > 0) process.exitCode = 1;
}
