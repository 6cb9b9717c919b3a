// Byte-level tokenizer for the default demo run: every UTF-8 byte is its own token (ids 0..255)
// and id 256 is EOS, so the vocabulary size is 257. It needs no files, cannot fail on any input
// and makes the demo's loss directly comparable to the corpus byte entropy (demo_corpus.ts).
//
// Usage:
//   import { encodeBytes, decodeBytes, BYTE_EOS_ID, BYTE_VOCAB_SIZE } from './byte_tokenizer.js';
//   const ids = encodeBytes('hello');      // Uint32Array [104,101,108,108,111]
//   const text = decodeBytes(ids);         // 'hello' (EOS ids decode to nothing)
// The same tokenizer behind the async TextTokenizer contract: loadTokenizer({ kind: 'bytes' }).

/** The EOS id appended after each document. */
export const BYTE_EOS_ID = 256;
/** 256 byte values + EOS. */
export const BYTE_VOCAB_SIZE = 257;

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8');

export function encodeBytes(text: string): Uint32Array {
  const bytes = utf8Encoder.encode(text);
  const ids = new Uint32Array(bytes.length);
  ids.set(bytes);
  return ids;
}

/** Decodes ids back to text; EOS is dropped, and invalid UTF-8 (a cut in the middle of a
 * character) becomes U+FFFD as TextDecoder does. Ids above 256 are a caller bug. */
export function decodeBytes(ids: ArrayLike<number>): string {
  const bytes = new Uint8Array(ids.length);
  let n = 0;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (id === BYTE_EOS_ID) continue;
    if (!(id >= 0 && id < 256)) throw new Error(`byte tokenizer: id ${id} at position ${i} is outside 0..256`);
    bytes[n++] = id;
  }
  return utf8Decoder.decode(bytes.subarray(0, n));
}
