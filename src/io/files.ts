// File primitives shared by the on-disk formats (token shards, safetensors, manifests and
// indexes): positioned reads and writes that loop until every byte has moved (one call moves
// at most 1 GiB: Linux caps a single read or write near 2 GiB), the little-endian host check
// for formats whose bytes are the host's typed-array memory, and a JSON file replaced
// atomically (temporary name, fsync, rename), so a reader sees the old file or the new one.
//
// Usage:
//   readFully(fd, bytes, position, `token shard ${path}`);   // Error names the file if it ends early
//   writeFully(fd, bytes, position);
//   assertLittleEndianHost('token shards');
//   writeJsonAtomic('data/tok/manifest.json', manifest);
import fs from 'node:fs';
import os from 'node:os';

/** One read or write call moves at most this much. */
export const MAX_IO_BYTES = 1 << 30;

/** Reads into.length bytes at `position`; `what` names the file in the Error when it ends early. */
export function readFully(fd: number, into: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < into.length) {
    const n = fs.readSync(fd, into, done, Math.min(into.length - done, MAX_IO_BYTES), position + done);
    if (n === 0) throw new Error(`${what} ended early at byte ${position + done} (was it truncated while open?)`);
    done += n;
  }
}

/** Writes every byte of `bytes` at `position`. */
export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, MAX_IO_BYTES), position + done);
  }
}

/** Formats stored as the host's typed-array memory need a little-endian host; `what` names the format. */
export function assertLittleEndianHost(what: string): void {
  if (os.endianness() !== 'LE') throw new Error(`${what} need a little-endian host`);
}

/** Writes `value` as indented JSON to `<file>.partial`, syncs it, and renames it to `file`. */
export function writeJsonAtomic(file: string, value: unknown): void {
  const temp = file + '.partial';
  const fd = fs.openSync(temp, 'w');
  try {
    writeFully(fd, Buffer.from(JSON.stringify(value, null, 2) + '\n', 'utf8'), 0);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, file);
}
