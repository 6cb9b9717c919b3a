// The default run's corpus: English-like text generated from a small hand-written grammar and
// a seed, so the demo needs no downloads and a tiny model can show, within a minute on a CPU,
// that it learns more than byte frequencies. What there is to learn, from easy to hard:
//   - spelling of a ~150-word vocabulary and sentence punctuation;
//   - agreement: "the old dog runs" / "the old dogs run";
//   - a fixed little world drawn from the seed: each person always lives in the same city and
//     keeps the same pet ("Mara lives in Oslo.");
//   - counting ("count from four: four, five, six, seven.") and small arithmetic
//     ("17 plus 5 is 22.", "9 times 3 is 27.").
// unigramEntropyNats gives the entropy of the token frequencies: a model whose cross-entropy
// falls below it (in nats per token, the loss's unit) has learned context, not just counts.
//
// Usage:
//   const { text, documents } = demoCorpus({ seed: 1, targetBytes: 600_000 });
//   const h = unigramEntropyNats(encodeBytes(text));   // ≈ 2.9 nats for bytes
// Deterministic: the same seed and size give the same text on every machine.
import { mix32 } from './permutation.js';

export interface DemoCorpusOptions {
  seed: number;
  /** Approximate size of `text` in bytes (default 600,000). */
  targetBytes?: number;
}

export interface DemoCorpus {
  /** Documents joined by blank lines. */
  text: string;
  /** Each a paragraph of 3 to 8 sentences; tokenize appends EOS after each. */
  documents: string[];
}

const NOUNS = ['dog', 'cat', 'bird', 'fox', 'horse', 'child', 'teacher', 'farmer', 'robot', 'sailor', 'baker', 'king', 'queen', 'frog', 'wolf', 'bear'];
const PLURAL: Record<string, string> = { child: 'children', fox: 'foxes', wolf: 'wolves' };
const ADJECTIVES = ['old', 'young', 'small', 'big', 'quiet', 'happy', 'tired', 'clever', 'brave', 'lazy', 'red', 'green'];
const VERBS = ['see', 'follow', 'help', 'watch', 'chase', 'find', 'call', 'like'];
const THIRD_PERSON: Record<string, string> = { watch: 'watches', chase: 'chases' };
const PLACES = ['garden', 'forest', 'river', 'market', 'school', 'field', 'harbor', 'kitchen'];
const NAMES = ['Mara', 'Tomas', 'Lena', 'Omar', 'Ivy', 'Jun', 'Rosa', 'Felix', 'Nadia', 'Piet', 'Sana', 'Hugo', 'Alma', 'Kofi', 'Vera', 'Emil'];
const CITIES = ['Oslo', 'Lima', 'Cairo', 'Quito', 'Perth', 'Kyoto', 'Dakar', 'Porto', 'Riga', 'Hanoi'];
const PETS = ['cat', 'dog', 'parrot', 'rabbit', 'turtle', 'goat'];
const NUMBER_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve',
  'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen', 'nineteen', 'twenty'];

/** mulberry32: a small, fast 32-bit generator; good enough to draw sentences. */
function rng(seed: number): () => number {
  let a = mix32((seed >>> 0) ^ mix32(Math.floor(seed / 2 ** 32)));
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function demoCorpus(options: DemoCorpusOptions): DemoCorpus {
  const seed = options.seed;
  if (!(Number.isSafeInteger(seed) && seed >= 0)) throw new Error(`demo corpus seed ${seed} must be a non-negative integer`);
  const target = options.targetBytes ?? 600_000;
  const random = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const int = (lo: number, hi: number): number => lo + Math.floor(random() * (hi - lo + 1));

  // The fixed world: facts that stay true across the whole corpus.
  const home = new Map(NAMES.map((n) => [n, pick(CITIES)]));
  const pet = new Map(NAMES.map((n) => [n, pick(PETS)]));

  const nounPhrase = (plural: boolean): string => {
    const noun = pick(NOUNS);
    const word = plural ? (PLURAL[noun] ?? noun + 's') : noun;
    return random() < 0.6 ? `the ${pick(ADJECTIVES)} ${word}` : `the ${word}`;
  };
  const sentences: (() => string)[] = [
    () => {
      const plural = random() < 0.5;
      const verb = pick(VERBS);
      const v = plural ? verb : (THIRD_PERSON[verb] ?? verb + 's');
      return `${nounPhrase(plural)} ${v} ${nounPhrase(random() < 0.5)}${random() < 0.4 ? ` in the ${pick(PLACES)}` : ''}.`;
    },
    () => { const n = pick(NAMES); return `${n} lives in ${home.get(n)}.`; },
    () => { const n = pick(NAMES); return `${n} has a ${pet.get(n)}.`; },
    () => { const n = pick(NAMES); return `the ${pet.get(n)} of ${n} lives in ${home.get(n)} too.`; },
    () => { const a = int(0, 20), b = int(0, 20); return `${a} plus ${b} is ${a + b}.`; },
    () => { const a = int(0, 30), b = int(0, a); return `${a} minus ${b} is ${a - b}.`; },
    () => { const a = int(0, 9), b = int(0, 9); return `${a} times ${b} is ${a * b}.`; },
    () => {
      const from = int(0, 15), len = int(3, 5);
      const words = NUMBER_WORDS.slice(from, from + len);
      return `count from ${words[0]}: ${words.join(', ')}.`;
    },
  ];

  const documents: string[] = [];
  let bytes = 0;
  while (bytes < target) {
    const count = int(3, 8);
    const parts: string[] = [];
    for (let i = 0; i < count; i++) {
      const s = pick(sentences)();
      parts.push(s[0]!.toUpperCase() + s.slice(1));
    }
    const doc = parts.join(' ');
    documents.push(doc);
    bytes += doc.length + 2; // ASCII only: chars = bytes; +2 for the blank line between
  }
  return { text: documents.join('\n\n'), documents };
}

/** Entropy in nats of the empirical distribution of token ids in `tokens`. */
export function unigramEntropyNats(tokens: ArrayLike<number>): number {
  const counts = new Map<number, number>();
  for (let i = 0; i < tokens.length; i++) counts.set(tokens[i]!, (counts.get(tokens[i]!) ?? 0) + 1);
  let h = 0;
  for (const c of counts.values()) {
    const p = c / tokens.length;
    h -= p * Math.log(p);
  }
  return h;
}
