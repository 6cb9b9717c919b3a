// The tokenizer contract used by tokenization and sampling. Implementations: the byte tokenizer
// (built in tokenizer.ts's loadTokenizer) and Hugging Face tokenizer.json (hf_tokenizer.ts).

export interface TextTokenizer {
  /** What the manifest and messages call this tokenizer ('bytes' or the tokenizer.json path). */
  readonly name: string;
  /** Number of ids the tokenizer can produce, special tokens included. */
  readonly vocabSize: number;
  /** The id appended after each document. */
  readonly eosId: number;
  /** Encodes each text as it is: no BOS, no EOS, no post-processing. */
  encodeBatch(texts: string[]): Promise<Uint32Array[]>;
  decode(ids: ArrayLike<number>): Promise<string>;
}
