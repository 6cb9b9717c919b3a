// Resume: the newest checkpoint that verifies (manifest, sizes, checksums) and whose values are
// finite is loaded; each newer one that does not is skipped with one line naming it and why.
// With several ranks the files' checksums are split among them, and the ranks agree through an
// all-reduce before moving on, so every rank loads the same checkpoint; the lowest rank that
// found a problem prints the line. No intact checkpoint at all is an error that says how to
// start over.
import type { Backend } from '../backend/backend.js';
import { CheckpointDamage, readCheckpointState, type CheckpointState } from './checkpoint_format.js';
import { agreeMax, SINGLE_PROCESS, type CheckpointGroup } from './checkpoint_group.js';
import { verifyCheckpoint } from './checkpoint_manifest.js';
import { checkDataFingerprint, checkRecipe, listCheckpoints, readEntries, type CheckpointTarget } from './checkpoint.js';

export interface ResumeOptions {
  backend: Backend;
  /** The ranks resuming together (default: this process alone). */
  group?: CheckpointGroup;
  /** Receives the skip lines. */
  log: (line: string) => void;
  dataFingerprint?: string;
  /** The run's training recipe (config.recipe): a checkpoint of another recipe is refused. */
  recipe?: string;
  /** How to start over, for the error when no checkpoint is intact (a command or two). */
  startOver: string;
}

/** Loads the newest intact checkpoint under dir into target; null when dir holds no checkpoint at all. */
export function resumeFromLatest(dir: string, target: CheckpointTarget, opts: ResumeOptions): { folder: string; state: CheckpointState } | null {
  const group = opts.group ?? SINGLE_PROCESS;
  const candidates = listCheckpoints(dir);
  if (candidates.length === 0) return null;
  for (const folder of candidates) {
    let problem = check(folder, () => { verifyCheckpoint(folder, { hash: (_, i) => i % group.size === group.rank }); });
    if (!agreed(group, opts, folder, problem)) continue;
    const state = readCheckpointState(folder);
    checkDataFingerprint(folder, state, opts.dataFingerprint);
    if (opts.recipe !== undefined) checkRecipe(folder, state, opts.recipe);
    problem = check(folder, () => { readEntries(folder, target.entries); });
    if (!agreed(group, opts, folder, problem)) continue;
    target.loaded(state);
    return { folder, state };
  }
  throw new Error(`no intact checkpoint in ${dir} (${candidates.length} skipped, see the lines above); to start over: ${opts.startOver}`);
}

/** Runs fn; a CheckpointDamage becomes its message, any other error goes on. */
function check(folder: string, fn: () => void): CheckpointDamage | null {
  try {
    fn();
    return null;
  } catch (e) {
    if (e instanceof CheckpointDamage && e.folder === folder) return e;
    throw e;
  }
}

/** True when no rank found a problem; otherwise the lowest rank that found one prints the skip line. */
function agreed(group: CheckpointGroup, opts: ResumeOptions, folder: string, problem: CheckpointDamage | null): boolean {
  const [worst] = agreeMax(group, opts.backend, [problem ? group.size - group.rank : 0]);
  if (!worst) return true;
  if (problem && group.size - group.rank === worst) opts.log(`moetrain: skipping checkpoint ${folder}: ${problem.kind}: ${problem.reason}; trying the one before it`);
  return false;
}

/** The newest checkpoint under dir that verifies, or null; loads nothing (for messages). */
export function latestIntactCheckpoint(dir: string): string | null {
  for (const folder of listCheckpoints(dir)) if (check(folder, () => { verifyCheckpoint(folder); }) === null) return folder;
  return null;
}
