// The zigzag layout of context parallelism: a sequence of S tokens is cut into 2·cp chunks of
// S/(2·cp) tokens, and rank r holds chunks r and 2·cp−1−r, in that order, as its S/cp local
// tokens. Under causal attention chunk i attends to i+1 chunks, so every rank has the same
// work: (r+1) + (2·cp−r) = 2·cp+1 chunk blocks. Pure host functions: the global position of a
// local token (RoPE rows), a rank's share of a [B, S] batch, which chunk blocks of a ring step a
// rank computes, and the one attention launch that covers them.

/** The checked chunk length S/(2·cp); a user-facing error when cp does not divide S/2. */
export function zigzagChunk(seqLen: number, cp: number): number {
  if (!(Number.isInteger(cp) && cp >= 1)) throw new Error(`--parallel.cp ${cp}: must be a positive integer`);
  if (seqLen % (2 * cp) !== 0) {
    throw new Error(`--parallel.cp ${cp} does not divide seq_len / 2 = ${seqLen / 2} (the zigzag layout cuts a sequence into 2·cp = ${2 * cp} equal chunks); choose a cp that divides ${seqLen / 2}, or a seq_len that is a multiple of ${2 * cp}`);
  }
  return seqLen / (2 * cp);
}

/** The two global chunk indices rank r holds, in local order: [r, 2·cp−1−r]. */
export function zigzagChunks(cp: number, rank: number): [number, number] {
  return [rank, 2 * cp - 1 - rank];
}

/** Global position of each of rank r's S/cp local tokens of a sequence of seqLen tokens. */
export function zigzagPositions(seqLen: number, cp: number, rank: number): number[] {
  const c = zigzagChunk(seqLen, cp);
  const [a, b] = zigzagChunks(cp, rank);
  const out = new Array<number>(2 * c);
  for (let i = 0; i < c; i++) { out[i] = a * c + i; out[c + i] = b * c + i; }
  return out;
}

/**
 * Rank r's share [B, S/cp, width] of a [B, S, width] row-major array (token ids or labels with
 * width 1, or a tensor's host values).
 */
export function zigzagSplit<T extends Int32Array | Float32Array>(x: T, batch: number, seqLen: number, cp: number, rank: number, width = 1): T {
  if (x.length !== batch * seqLen * width) throw new Error(`internal: zigzagSplit of ${x.length} values as [${batch}, ${seqLen}, ${width}]`);
  const pos = zigzagPositions(seqLen, cp, rank), local = pos.length;
  const out = new (x.constructor as new (n: number) => T)(batch * local * width);
  for (let b = 0; b < batch; b++) for (let i = 0; i < local; i++) {
    const from = (b * seqLen + pos[i]!) * width;
    out.set(x.subarray(from, from + width), (b * local + i) * width);
  }
  return out;
}

/** The inverse of zigzagSplit: every rank's share (parts[r]) put back into a [B, S, width] array. */
export function zigzagJoin<T extends Int32Array | Float32Array>(parts: readonly T[], batch: number, seqLen: number, width = 1): T {
  const cp = parts.length, out = new (parts[0]!.constructor as new (n: number) => T)(batch * seqLen * width);
  const local = seqLen / cp;
  parts.forEach((p, r) => {
    const pos = zigzagPositions(seqLen, cp, r);
    for (let b = 0; b < batch; b++) for (let i = 0; i < local; i++) {
      const from = (b * local + i) * width;
      out.set(p.subarray(from, from + width), (b * seqLen + pos[i]!) * width);
    }
  });
  return out;
}

/** How a q chunk meets a k chunk under causal attention. */
export type BlockKind = 'diagonal' | 'full' | 'skip';

export function blockKind(qChunk: number, kChunk: number): BlockKind {
  return qChunk === kChunk ? 'diagonal' : kChunk < qChunk ? 'full' : 'skip';
}

/** One attention block: local q half (0 or 1) against local half of the k/v block held. */
export interface RingBlock { q: 0 | 1; k: 0 | 1; kind: 'diagonal' | 'full' }

/**
 * The blocks rank `rank` computes while it holds the k/v of rank `source` (the ring step
 * (rank − source) mod cp): step 0 gives two diagonal blocks and one full one, every other step
 * two full blocks (q half 1 against k half 0 always; q half 0 against k half 0 when source <
 * rank, q half 1 against k half 1 when source > rank).
 */
export function ringBlocks(cp: number, rank: number, source: number): RingBlock[] {
  const qs = zigzagChunks(cp, rank), ks = zigzagChunks(cp, source);
  const out: RingBlock[] = [];
  for (const q of [0, 1] as const) for (const k of [0, 1] as const) {
    const kind = blockKind(qs[q], ks[k]);
    if (kind !== 'skip') out.push({ q, k, kind });
  }
  return out;
}

/**
 * The one attention launch of a ring step: local q (both halves, or half 1 only) against the
 * k/v held (both halves, or half 0 only), with the ordinary causal mask on local indices or none.
 * Both halves of a side mean its 2·c tokens as one operand, in local order.
 */
export interface RingStep { q: 'both' | 1; kv: 'both' | 0; causal: boolean }

/**
 * The launch that covers exactly ringBlocks(cp, rank, source). A rank's local tokens are chunks
 * r < 2·cp−1−r in increasing global order, so
 *   own k/v (source = rank): causal over the 2·c local tokens with the local causal mask is the
 *     two diagonal blocks plus q half 1 × kv half 0 (one causal launch of length 2·c);
 *   source < rank: chunk `source` precedes both q chunks and chunk 2·cp−1−source follows both:
 *     q 2·c × kv half 0 (c), no mask;
 *   source > rank: only q chunk 2·cp−1−rank follows both kv chunks: q half 1 (c) × kv 2·c, no mask.
 */
export function ringStep(cp: number, rank: number, source: number): RingStep {
  if (!(rank >= 0 && rank < cp && source >= 0 && source < cp)) throw new Error(`internal: ringStep(cp ${cp}, rank ${rank}, source ${source})`);
  if (source === rank) return { q: 'both', kv: 'both', causal: true };
  return source < rank ? { q: 'both', kv: 0, causal: false } : { q: 1, kv: 'both', causal: false };
}
