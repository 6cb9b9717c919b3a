// safetensors files: an 8-byte little-endian header length N, N bytes of JSON (padded with
// spaces so the data starts at a multiple of 8), then the tensors' bytes, little-endian,
// row-major, packed without gaps. The JSON maps each name to
// { dtype, shape, data_offsets: [begin, end] } (offsets relative to the data start) and may
// hold "__metadata__": { string: string }.
// Readers check everything the header claims against the file (offsets in bounds, contiguous,
// non-overlapping, byte counts = dtype size × shape product, data size = file size) and then
// read one tensor, or a byte range of it, by offset: a file is never loaded whole. Writers
// take the list of tensors first (the header must come before the data), stream each tensor's
// bytes (whole or in pieces), and rename `<path>.partial` to `<path>` once every byte is there.
//
// Usage:
//   const f = openSafetensors('model.safetensors');
//   for (const t of f.tensors.values()) console.log(t.name, t.dtype, t.shape);
//   const bytes = f.readBytes('lm_head.weight');                       // Uint8Array
//   const part = f.readBytes('lm_head.weight', { start: 0, length: 4096 });
//   const { data } = f.readTensor('lm_head.weight');                   // Uint16Array for BF16
//   f.close();
//
//   const w = SafetensorsWriter.create('out.safetensors',
//     [{ name: 'w', dtype: 'F32', shape: [2, 3] }], { format: 'pt' });
//   w.write('w', new Float32Array(6));   // or several write('w', piece) calls in order
//   w.finish();
//   // or at once: writeSafetensors('out.safetensors', [{ name, dtype, shape, data }], metadata);
import fs from 'node:fs';
import type { DType } from '../tensor/dtype.js';
import { assertLittleEndianHost, readFully, writeFully } from './files.js';

export type SafetensorsDType =
  | 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2'
  | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

export function safetensorsDTypeBytes(dtype: SafetensorsDType): number {
  switch (dtype) {
    case 'F64': case 'I64': case 'U64': return 8;
    case 'F32': case 'I32': case 'U32': return 4;
    case 'F16': case 'BF16': case 'I16': case 'U16': return 2;
    case 'F8_E4M3': case 'F8_E5M2': case 'I8': case 'U8': case 'BOOL': return 1;
    default: return dtype satisfies never;
  }
}

function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  switch (s) {
    case 'F64': case 'F32': case 'F16': case 'BF16': case 'F8_E4M3': case 'F8_E5M2':
    case 'I64': case 'I32': case 'I16': case 'I8': case 'U64': case 'U32': case 'U16': case 'U8': case 'BOOL':
      return true;
    default:
      return false;
  }
}

/** The safetensors dtype that stores a moetrain tensor dtype. */
export function safetensorsDTypeOf(dtype: DType): SafetensorsDType {
  switch (dtype) {
    case 'f32': return 'F32';
    case 'bf16': return 'BF16';
    case 'i32': return 'I32';
    default: return dtype satisfies never;
  }
}

/** The moetrain dtype for a safetensors dtype, or null when moetrain has none. */
export function tensorDTypeOf(dtype: SafetensorsDType): DType | null {
  switch (dtype) {
    case 'F32': return 'f32';
    case 'BF16': return 'bf16';
    case 'I32': return 'i32';
    default: return null;
  }
}

/** The typed array readTensor returns for each dtype (16-bit floats as raw bits). */
export type SafetensorsArray =
  | Float64Array | Float32Array | Uint16Array | Int16Array | Uint8Array | Int8Array
  | BigInt64Array | BigUint64Array | Int32Array | Uint32Array;

function viewAs(dtype: SafetensorsDType, buffer: ArrayBuffer, count: number): SafetensorsArray {
  switch (dtype) {
    case 'F64': return new Float64Array(buffer, 0, count);
    case 'F32': return new Float32Array(buffer, 0, count);
    case 'F16': case 'BF16': case 'U16': return new Uint16Array(buffer, 0, count);
    case 'I16': return new Int16Array(buffer, 0, count);
    case 'I64': return new BigInt64Array(buffer, 0, count);
    case 'U64': return new BigUint64Array(buffer, 0, count);
    case 'I32': return new Int32Array(buffer, 0, count);
    case 'U32': return new Uint32Array(buffer, 0, count);
    case 'I8': return new Int8Array(buffer, 0, count);
    case 'F8_E4M3': case 'F8_E5M2': case 'U8': case 'BOOL': return new Uint8Array(buffer, 0, count);
    default: return dtype satisfies never;
  }
}

export interface SafetensorsTensorSpec {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
}

export interface SafetensorsTensorInfo extends SafetensorsTensorSpec {
  /** Bytes of the tensor. */
  byteLength: number;
  /** Where its bytes start, from the beginning of the file. */
  fileOffset: number;
}

export interface ReadRange {
  /** Byte offset inside the tensor (default 0). */
  start?: number;
  /** Bytes to read (default: to the end of the tensor). */
  length?: number;
  /** Destination (default: a new Uint8Array). */
  into?: Uint8Array;
}

export interface SafetensorsFile {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** In header order. */
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>;
  readBytes(name: string, range?: ReadRange): Uint8Array;
  readTensor(name: string): { dtype: SafetensorsDType; shape: number[]; data: SafetensorsArray };
  close(): void;
}

/** Largest header accepted (the reference implementation's limit). */
const MAX_HEADER_BYTES = 100_000_000;
function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkShape(shape: unknown): shape is number[] {
  return Array.isArray(shape) && shape.every((d) => Number.isSafeInteger(d) && d >= 0) && Number.isSafeInteger(elementCount(shape));
}

/** The header length from the file's first 8 bytes, checked against the file size. */
export function safetensorsHeaderLength(path: string, first8: Uint8Array, fileSize: number): number {
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8)) throw new Error(`safetensors file ${path}: header length ${n} runs past the end of the ${fileSize}-byte file (truncated or not a safetensors file)`);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new Error(`safetensors file ${path}: header length ${n} is over the ${MAX_HEADER_BYTES}-byte limit`);
  return Number(n);
}

/** Parses the header JSON and checks it against a file of `fileSize` bytes. */
export function parseSafetensorsHeader(path: string, headerJson: Uint8Array, fileSize: number):
  { metadata: Record<string, string>; tensors: Map<string, SafetensorsTensorInfo> } {
  const fail = (what: string): Error => new Error(`safetensors file ${path}: ${what}`);
  const headerBytes = headerJson.length;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerJson);
  } catch {
    throw fail('header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw fail('header does not start with "{"');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw fail('header is not a JSON object');
  const dataStart = 8 + headerBytes;
  const dataBytes = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsTensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw fail('__metadata__ must be an object of string values');
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (e === null || typeof e !== 'object') throw fail(`tensor ${name}: entry is not an object`);
    if (!isSafetensorsDType(e.dtype)) throw fail(`tensor ${name}: unknown dtype ${JSON.stringify(e.dtype)}`);
    if (!checkShape(e.shape)) throw fail(`tensor ${name}: shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`);
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
      throw fail(`tensor ${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offsets as [number, number];
    const expected = elementCount(e.shape) * safetensorsDTypeBytes(e.dtype);
    if (end - begin !== expected) {
      throw fail(`tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but ${e.dtype} × shape [${e.shape.join(', ')}] needs ${expected}`);
    }
    if (end > dataBytes) throw fail(`tensor ${name}: data_offsets [${begin}, ${end}] run past the ${dataBytes} bytes of data (file truncated?)`);
    tensors.set(name, { name, dtype: e.dtype, shape: e.shape, byteLength: expected, fileOffset: dataStart + begin });
    spans.push({ name, begin, end });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const s of spans) {
    if (s.begin < at) throw fail(`tensor ${s.name}: data_offsets [${s.begin}, ${s.end}] overlap the tensor before it (which ends at ${at})`);
    if (s.begin > at) throw fail(`tensor ${s.name}: data_offsets [${s.begin}, ${s.end}] leave a gap of ${s.begin - at} bytes after offset ${at}; tensors must be packed`);
    at = s.end;
  }
  if (at !== dataBytes) {
    throw fail(`tensors cover ${at} bytes of data but the file holds ${dataBytes}; the file is ${at > dataBytes ? 'truncated' : 'longer than its header says'}`);
  }
  return { metadata, tensors };
}

export function openSafetensors(path: string): SafetensorsFile {
  assertLittleEndianHost('safetensors files');
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open safetensors file ${path}: ${(e as Error).message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new Error(`safetensors file ${path} is truncated: ${size} bytes, shorter than the 8-byte header length`);
    const lengthBytes = new Uint8Array(8);
    readFully(fd, lengthBytes, 0, `safetensors file ${path}`);
    const json = new Uint8Array(safetensorsHeaderLength(path, lengthBytes, size));
    readFully(fd, json, 8, `safetensors file ${path}`);
    const { metadata, tensors } = parseSafetensorsHeader(path, json, size);
    let closed = false;
    const info = (name: string): SafetensorsTensorInfo => {
      if (closed) throw new Error(`internal: read from closed safetensors file ${path}`);
      const t = tensors.get(name);
      if (t === undefined) throw new Error(`safetensors file ${path} has no tensor named ${JSON.stringify(name)}`);
      return t;
    };
    const readBytes = (name: string, range: ReadRange = {}): Uint8Array => {
      const t = info(name);
      const start = range.start ?? 0;
      const length = range.length ?? t.byteLength - start;
      if (!(Number.isSafeInteger(start) && Number.isSafeInteger(length) && start >= 0 && length >= 0 && start + length <= t.byteLength)) {
        throw new Error(`internal: byte range [${start}, ${start + length}) outside tensor ${name} of ${t.byteLength} bytes in ${path}`);
      }
      const out = range.into ?? new Uint8Array(length);
      if (out.length < length) throw new Error(`internal: destination of ${out.length} bytes for a read of ${length}`);
      readFully(fd, out.subarray(0, length), t.fileOffset + start, `safetensors file ${path}`);
      return out.subarray(0, length);
    };
    return {
      path,
      metadata,
      tensors,
      readBytes,
      readTensor(name) {
        const t = info(name);
        const buffer = new ArrayBuffer(t.byteLength);
        readBytes(name, { into: new Uint8Array(buffer) });
        return { dtype: t.dtype, shape: [...t.shape], data: viewAs(t.dtype, buffer, t.byteLength / safetensorsDTypeBytes(t.dtype)) };
      },
      close() {
        if (closed) return;
        closed = true;
        fs.closeSync(fd);
      },
    };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** The header bytes (length prefix + space-padded JSON) for tensors laid out in the given order. */
export function encodeSafetensorsHeader(specs: readonly SafetensorsTensorSpec[], metadata?: Record<string, string>): { header: Uint8Array; offsets: number[]; dataBytes: number } {
  const json: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`safetensors metadata ${k} must be a string, got ${typeof v}`);
    }
    json['__metadata__'] = metadata;
  }
  const offsets: number[] = [];
  let at = 0;
  for (const s of specs) {
    if (s.name === '' || s.name === '__metadata__') throw new Error(`invalid tensor name ${JSON.stringify(s.name)}`);
    if (Object.prototype.hasOwnProperty.call(json, s.name)) throw new Error(`tensor name ${s.name} appears twice`);
    if (!isSafetensorsDType(s.dtype)) throw new Error(`tensor ${s.name}: unknown dtype ${String(s.dtype)}`);
    if (!checkShape(s.shape)) throw new Error(`tensor ${s.name}: shape ${JSON.stringify(s.shape)} is not a list of non-negative integers`);
    const bytes = elementCount(s.shape) * safetensorsDTypeBytes(s.dtype);
    json[s.name] = { dtype: s.dtype, shape: [...s.shape], data_offsets: [at, at + bytes] };
    offsets.push(at);
    at += bytes;
  }
  let text = JSON.stringify(json);
  const encoded = new TextEncoder().encode(text);
  const padded = Math.ceil(encoded.length / 8) * 8;
  text += ' '.repeat(padded - encoded.length);
  const header = new Uint8Array(8 + padded);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(new TextEncoder().encode(text), 8);
  return { header, offsets, dataBytes: at };
}

export class SafetensorsWriter {
  private readonly written: number[];
  private readonly index = new Map<string, number>();
  private closed = false;

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    private readonly fd: number,
    private readonly specs: readonly SafetensorsTensorSpec[],
    private readonly dataStart: number,
    private readonly offsets: number[],
  ) {
    this.written = specs.map(() => 0);
    specs.forEach((s, i) => this.index.set(s.name, i));
  }

  /** Opens `<path>.partial` and writes the header; tensors are laid out in `specs` order. */
  static create(path: string, specs: readonly SafetensorsTensorSpec[], metadata?: Record<string, string>): SafetensorsWriter {
    assertLittleEndianHost('safetensors files');
    const { header, offsets } = encodeSafetensorsHeader(specs, metadata);
    const tempPath = path + '.partial';
    const fd = fs.openSync(tempPath, 'w');
    try {
      writeFully(fd, header, 0);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new SafetensorsWriter(path, tempPath, fd, specs, header.length, offsets);
  }

  /** Appends bytes to tensor `name` (its whole data or the next piece of it). */
  write(name: string, data: ArrayBufferView): void {
    if (this.closed) throw new Error(`internal: write to finished safetensors file ${this.path}`);
    const i = this.index.get(name);
    if (i === undefined) throw new Error(`internal: tensor ${name} was not declared for ${this.path}`);
    const spec = this.specs[i]!;
    const total = elementCount(spec.shape) * safetensorsDTypeBytes(spec.dtype);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (this.written[i]! + bytes.length > total) {
      throw new Error(`internal: tensor ${name} (${spec.dtype} [${spec.shape.join(', ')}], ${total} bytes) got ${this.written[i]! + bytes.length} bytes`);
    }
    writeFully(this.fd, bytes, this.dataStart + this.offsets[i]! + this.written[i]!);
    this.written[i]! += bytes.length;
  }

  /** Checks every tensor is complete, syncs, and renames the file to its final name. */
  finish(): void {
    const missing = this.specs.filter((s, i) => this.written[i] !== elementCount(s.shape) * safetensorsDTypeBytes(s.dtype));
    if (missing.length > 0) {
      this.abort();
      throw new Error(`internal: safetensors file ${this.path} closed before tensors ${missing.slice(0, 5).map((s) => s.name).join(', ')}${missing.length > 5 ? ', ...' : ''} were fully written`);
    }
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.closed = true;
    fs.renameSync(this.tempPath, this.path);
  }

  abort(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
    fs.rmSync(this.tempPath, { force: true });
  }
}

export interface SafetensorsTensorData extends SafetensorsTensorSpec {
  data: ArrayBufferView;
}

/** Writes a whole file at once (small files, tests). */
export function writeSafetensors(path: string, tensors: readonly SafetensorsTensorData[], metadata?: Record<string, string>): void {
  const w = SafetensorsWriter.create(path, tensors, metadata);
  try {
    for (const t of tensors) w.write(t.name, t.data);
  } catch (e) {
    w.abort();
    throw e;
  }
  w.finish();
}
