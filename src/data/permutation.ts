// A seeded pseudo-random permutation of 0..n-1 that needs O(1) memory: a 6-round balanced
// Feistel network on the smallest even-bit power-of-two domain ≥ n, with cycle walking (apply
// again until the value falls below n; the domain is < 4n, so < 4 rounds trips on average).
// The loader shuffles window indices with it: the same (seed, epoch, n) gives the same order on
// every rank and after every restart, without storing an array of n indices.
//
// Usage:
//   const perm = new FeistelPermutation(n, seed, epoch);
//   perm.at(i);        // the i-th element of the permutation, for 0 <= i < n
//   perm.indexOf(x);   // the inverse

const ROUNDS = 6;
/** Up to 2^32 elements: 32-bit domain halves of 16 bits keep all arithmetic exact. */
export const MAX_PERMUTATION_SIZE = 2 ** 32;

/** A 32-bit integer mixer (xorshift-multiply; full avalanche). */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** splitmix64 over BigInt: turns (seed, epoch) into independent 32-bit round keys. */
function roundKeys(seed: number, epoch: number): number[] {
  const M = (1n << 64n) - 1n;
  let state = (BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(epoch) * 0xd1b54a32d192ed03n) & M;
  const keys: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    state = (state + 0x9e3779b97f4a7c15n) & M;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    z = z ^ (z >> 31n);
    keys.push(Number(z & 0xffffffffn));
  }
  return keys;
}

export class FeistelPermutation {
  private readonly halfBits: number;
  private readonly half: number;
  private readonly mask: number;
  private readonly keys: number[];

  constructor(readonly n: number, readonly seed: number, readonly epoch: number) {
    if (!(Number.isInteger(n) && n >= 1 && n <= MAX_PERMUTATION_SIZE)) throw new Error(`permutation size ${n} must be an integer in 1..2^32`);
    if (!(Number.isSafeInteger(seed) && seed >= 0)) throw new Error(`seed ${seed} must be a non-negative integer below 2^53`);
    if (!(Number.isSafeInteger(epoch) && epoch >= 0)) throw new Error(`internal: epoch ${epoch}`);
    let bits = Math.max(2, Math.ceil(Math.log2(n)));
    if (2 ** bits < n) bits++;
    if (bits % 2 === 1) bits++;
    this.halfBits = bits / 2;
    this.half = 2 ** this.halfBits;
    this.mask = this.half - 1;
    this.keys = roundKeys(seed, epoch);
  }

  private round(r: number, key: number): number {
    return mix32((r ^ key) >>> 0) & this.mask;
  }

  private forward(x: number): number {
    let left = Math.floor(x / this.half);
    let right = x % this.half;
    for (const key of this.keys) {
      const next = (left ^ this.round(right, key)) >>> 0;
      left = right;
      right = next;
    }
    return left * this.half + right;
  }

  private backward(x: number): number {
    let left = Math.floor(x / this.half);
    let right = x % this.half;
    for (let k = this.keys.length - 1; k >= 0; k--) {
      const prev = (right ^ this.round(left, this.keys[k]!)) >>> 0;
      right = left;
      left = prev;
    }
    return left * this.half + right;
  }

  at(i: number): number {
    if (!(Number.isInteger(i) && i >= 0 && i < this.n)) throw new Error(`internal: permutation index ${i} outside 0..${this.n - 1}`);
    let x = this.forward(i);
    while (x >= this.n) x = this.forward(x);
    return x;
  }

  indexOf(x: number): number {
    if (!(Number.isInteger(x) && x >= 0 && x < this.n)) throw new Error(`internal: permutation value ${x} outside 0..${this.n - 1}`);
    let i = this.backward(x);
    while (i >= this.n) i = this.backward(i);
    return i;
  }
}
