// Loading a tokenizer from its serialisable description (TokenizerSpec), which lets every
// tokenize worker thread load the same tokenizer. The contract itself is text_tokenizer.ts's
// TextTokenizer, exported here too for the callers of loadTokenizer.
//
// Usage:
//   const tok = await loadTokenizer({ kind: 'hf', path: 'tok/tokenizer.json' });
//   const [ids] = await tok.encodeBatch(['some text']);   // no EOS/BOS added
//   const text = await tok.decode(ids);
import { encodeBytes, decodeBytes, BYTE_EOS_ID, BYTE_VOCAB_SIZE } from './byte_tokenizer.js';
import { loadHfTokenizer } from './hf_tokenizer.js';
import type { TextTokenizer } from './text_tokenizer.js';

export type { TextTokenizer } from './text_tokenizer.js';

/** A tokenizer by description; plain data, so it can cross into worker threads. */
export type TokenizerSpec =
  | { kind: 'bytes' }
  /** path: a tokenizer.json or the folder holding it; eosToken overrides tokenizer_config.json. */
  | { kind: 'hf'; path: string; eosToken?: string };

export async function loadTokenizer(spec: TokenizerSpec): Promise<TextTokenizer> {
  switch (spec.kind) {
    case 'bytes':
      return {
        name: 'bytes',
        vocabSize: BYTE_VOCAB_SIZE,
        eosId: BYTE_EOS_ID,
        encodeBatch: async (texts) => texts.map(encodeBytes),
        decode: async (ids) => decodeBytes(ids),
      };
    case 'hf':
      return loadHfTokenizer(spec.path, spec.eosToken === undefined ? {} : { eosToken: spec.eosToken });
    default:
      return spec satisfies never;
  }
}
