// The start-up line of a context-parallel run (cp > 1): each rank's zigzag chunks and how ring
// attention will run (parallel/ring_attention.ts), so that a user sees whether the chunk allows
// the one-launch ring, the fast path on Hopper GPUs, e.g.
//   moetrain: context parallel cp 2: rank r holds zigzag chunks r and 3 − r of 512 tokens (seq_len 2048); ring attention: one launch per rank on Hopper GPUs (the chunk is a multiple of 128 tokens), one per ring step elsewhere

export function formatContextLine(cp: number, seqLen: number): string {
  const c = seqLen / (2 * cp);
  const how = c % 128 === 0
    ? 'one launch per rank on Hopper GPUs (the chunk is a multiple of 128 tokens), one per ring step elsewhere'
    : `one launch per ring step (one launch per rank on Hopper GPUs needs a chunk that is a multiple of 128 tokens: seq_len a multiple of ${256 * cp})`;
  return `moetrain: context parallel cp ${cp}: rank r holds zigzag chunks r and ${2 * cp - 1} − r of ${c} tokens (seq_len ${seqLen}); ring attention: ${how}`;
}
