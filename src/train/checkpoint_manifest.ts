// A checkpoint's manifest: the size and XXH32 (io/xxhash32.ts) of every other file in the folder,
// written last, just before the folder is renamed to its final name. Verifying a checkpoint
// checks that the manifest is there, that every file it lists exists with its size, and that the
// bytes hash to what it says. A folder of the format before manifests (model.safetensors +
// optimizer.safetensors + state.json) has no checksums: its safetensors headers are checked
// against the file sizes instead.
import fs from 'node:fs';
import path from 'node:path';
import { openSafetensors } from '../io/safetensors.js';
import { Xxh32 } from '../io/xxhash32.js';
import {
  CheckpointDamage, CheckpointReader, firstNonFinite, INDEX_FILE, LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE, MANIFEST_FILE, readCheckpointState, STATE_FILE,
  writeJsonFile, type CheckpointState,
} from './checkpoint_format.js';

export interface ManifestFile { bytes: number; xxh32: string }

export interface CheckpointManifest {
  format: 'moetrain-checkpoint-manifest';
  version: 1;
  files: Record<string, ManifestFile>;
}

/** Bytes read per call when hashing a file. */
const READ_CHUNK = 8 << 20;

/** Size and XXH32 of a file, read in chunks. */
export function hashFile(file: string): ManifestFile {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = new Uint8Array(READ_CHUNK);
    const h = new Xxh32();
    let bytes = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, READ_CHUNK, bytes);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      bytes += n;
    }
    return { bytes, xxh32: h.hex() };
  } finally {
    fs.closeSync(fd);
  }
}

export function writeManifest(folder: string, files: Record<string, ManifestFile>): void {
  const sorted = Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : 1)));
  const manifest: CheckpointManifest = { format: 'moetrain-checkpoint-manifest', version: 1, files: sorted };
  writeJsonFile(path.join(folder, MANIFEST_FILE), manifest);
}

export interface VerifyOptions {
  /** Which listed files to hash (the i-th in name order); default all. Sizes are checked for every file. */
  hash?: (file: string, i: number) => boolean;
}

export interface Verified {
  state: CheckpointState;
  /** Files and bytes the manifest lists (for the legacy format: its two safetensors files). */
  files: number;
  bytes: number;
  /** The format before manifests: no checksums were checked. */
  legacy: boolean;
}

function readManifest(folder: string): CheckpointManifest {
  let m: CheckpointManifest;
  try { m = JSON.parse(fs.readFileSync(path.join(folder, MANIFEST_FILE), 'utf8')) as CheckpointManifest; } catch (e) {
    throw new CheckpointDamage(folder, 'damaged', `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
  }
  if (m?.format !== 'moetrain-checkpoint-manifest' || typeof m.files !== 'object' || m.files === null) {
    throw new CheckpointDamage(folder, 'damaged', `${MANIFEST_FILE} is not a moetrain checkpoint manifest`);
  }
  for (const [name, f] of Object.entries(m.files)) {
    if (name.includes('/') || name.includes('\\') || name === '..' || !Number.isSafeInteger(f?.bytes) || !/^[0-9a-f]{8}$/.test(String(f?.xxh32))) {
      throw new CheckpointDamage(folder, 'damaged', `${MANIFEST_FILE} has a malformed entry for ${JSON.stringify(name)}`);
    }
  }
  return m;
}

/**
 * Checks a checkpoint folder; throws CheckpointDamage naming the first problem found. It does
 * not look inside the tensors (CheckpointReader callers check their values are finite).
 */
export function verifyCheckpoint(folder: string, opts: VerifyOptions = {}): Verified {
  if (!fs.existsSync(folder) || !fs.statSync(folder).isDirectory()) throw new CheckpointDamage(folder, 'incomplete', 'the folder does not exist');
  if (!fs.existsSync(path.join(folder, MANIFEST_FILE))) {
    if (fs.existsSync(path.join(folder, LEGACY_MODEL_FILE)) && !fs.existsSync(path.join(folder, INDEX_FILE))) return verifyLegacy(folder);
    const any = fs.readdirSync(folder).length > 0;
    throw new CheckpointDamage(folder, 'incomplete', any ? `${MANIFEST_FILE} is missing (the write did not finish)` : 'the folder is empty');
  }
  const manifest = readManifest(folder);
  const names = Object.keys(manifest.files).sort();
  for (const required of [STATE_FILE, INDEX_FILE]) {
    if (!names.includes(required)) throw new CheckpointDamage(folder, 'damaged', `${MANIFEST_FILE} does not list ${required}`);
  }
  let bytes = 0;
  for (const name of names) {
    const want = manifest.files[name]!;
    const file = path.join(folder, name);
    if (!fs.existsSync(file)) throw new CheckpointDamage(folder, name === STATE_FILE ? 'incomplete' : 'damaged', `${name} is missing`);
    const size = fs.statSync(file).size;
    if (size !== want.bytes) {
      throw new CheckpointDamage(folder, 'damaged', `${name} is ${size} bytes but the manifest says ${want.bytes} (${size < want.bytes ? 'truncated' : 'longer than written'})`);
    }
    bytes += size;
  }
  names.forEach((name, i) => {
    if (opts.hash && !opts.hash(name, i)) return;
    const got = hashFile(path.join(folder, name)).xxh32;
    const want = manifest.files[name]!.xxh32;
    if (got !== want) throw new CheckpointDamage(folder, 'damaged', `${name} does not match its checksum (XXH32 ${got}, the manifest says ${want})`);
  });
  const state = readCheckpointState(folder);
  CheckpointReader.open(folder).close();
  return { state, files: names.length, bytes, legacy: false };
}

function verifyLegacy(folder: string): Verified {
  const state = readCheckpointState(folder);
  let bytes = 0;
  for (const name of [LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE]) {
    const file = path.join(folder, name);
    if (!fs.existsSync(file)) throw new CheckpointDamage(folder, 'incomplete', `${name} is missing`);
    // Opening checks the header against the file size (a truncated file fails here).
    try { openSafetensors(file).close(); } catch (e) { throw new CheckpointDamage(folder, 'damaged', (e as Error).message); }
    bytes += fs.statSync(file).size;
  }
  return { state, files: 2, bytes, legacy: true };
}

/** Elements read at a time when scanning values. */
const SCAN_ELEMENTS = 1 << 22;

/** Reads every tensor of a checkpoint and throws CheckpointDamage at the first NaN or infinity. */
export function verifyCheckpointValues(folder: string): void {
  const reader = CheckpointReader.open(folder);
  try {
    for (const name of reader.names()) {
      const n = reader.shape(name)!.reduce((a, b) => a * b, 1);
      for (let at = 0; at < n; at += SCAN_ELEMENTS) {
        const data = reader.readRange(name, at, Math.min(n, at + SCAN_ELEMENTS));
        const bad = firstNonFinite(data);
        if (bad >= 0) throw new CheckpointDamage(folder, 'damaged', `${name} holds ${data[bad]} at element ${at + bad}`);
      }
    }
  } finally {
    reader.close();
  }
}
