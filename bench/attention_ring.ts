// Ring-attention blocks on one GPU (`moetrain bench attention --cp 2|4`): for s = 4096 / 8192 /
// 16384 split over cp ranks in the zigzag layout (src/parallel/zigzag.ts), the attention blocks
// one ring rank computes (ringBlocks over the cp steps: two causal-diagonal blocks and 2·cp − 1
// full ones, each c × c with c = s/(2·cp)), timed forward and backward, against the
// whole-sequence causal kernel at the same s measured in the same round. A rank does 1/cp of the
// whole sequence's causal work, so its TFLOP/s is (FLOPs(s)/cp) / its time; the target is
// ≥ 0.95× the whole-sequence kernel's (issue 14). The lse merges and the transfers are not timed.
//
//   moetrain bench attention --cp 2     (or: node dist/bench/attention_ring.js 2)
//
// FLOPs as bench/attention.ts (FlashAttention convention): a causal block of c is b·h·c²·(dq+dv),
// a full block twice that; backward 2.5× forward. Times are medians of CUDA-event timings with
// inputs rotated so that L2 never serves a repeat, and each cell the median over `rounds`.
import { pathToFileURL } from 'node:url';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { MlaAttentionLauncher, type MlaGrads, type MlaTensorCoreKernels } from '../src/backend/cuda/ops/mla_attention.js';
import { chooseMlaKernels } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import { CudaContext } from '../src/backend/cuda/runtime/context.js';
import { ringBlocks, zigzagChunk, type RingBlock } from '../src/parallel/zigzag.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';
import { attentionFlops, D_NOPE, D_ROPE, D_V, fillRandom, L2_BYTES, median, randomBf16Chunk, timeMs } from './attention.js';

/** One input set of length n: q, k, v, dout, and o/lse from a causal and from a full forward. */
interface BlockSet {
  qNope: Tensor; qPe: Tensor; kNope: Tensor; kPe: Tensor; v: Tensor; dout: Tensor;
  out: { causal: { o: Tensor; lse: Tensor }; full: { o: Tensor; lse: Tensor } };
  grads: MlaGrads;
}

/** The blocks one rank computes over the cp ring steps (every rank has the same kinds and counts). */
export function rankBlocks(cp: number, rank = 0): RingBlock[] {
  const out: RingBlock[] = [];
  for (let j = 0; j < cp; j++) out.push(...ringBlocks(cp, rank, (rank - j + cp) % cp));
  return out;
}

/** Forward and backward ms of `blocks` run back to back (causal: the whole-sequence kernel at n). */
interface Timed { fwd: number; bwd: number }

function timeBlocks(be: CudaBackend, attention: MlaAttentionLauncher, kernels: MlaTensorCoreKernels, b: number, h: number, n: number,
  kinds: readonly ('diagonal' | 'full')[], chunk: Uint16Array): Timed {
  const ctx = be.ctx;
  const owned: Tensor[] = [];
  const make = (shape: Shape, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => { const t = emptyTensor(be, shape, dtype); owned.push(t); return t; };
  const scale = 1 / Math.sqrt(D_NOPE + D_ROPE);
  try {
    const setBytes = b * n * h * (2 * D_NOPE + D_ROPE + 4 * D_V) * 2;
    const nSets = Math.max(2, Math.min(16, Math.ceil((3 * L2_BYTES) / setBytes)));
    const sets: BlockSet[] = [];
    let seed = 0;
    for (let i = 0; i < nSets; i++) {
      const pair = () => ({ o: make([b, n, h, D_V]), lse: make([b, h, n], 'f32') });
      const set: BlockSet = {
        qNope: make([b, n, h, D_NOPE]), qPe: make([b, n, h, D_ROPE]), kNope: make([b, n, h, D_NOPE]), kPe: make([b, n, 1, D_ROPE]),
        v: make([b, n, h, D_V]), dout: make([b, n, h, D_V]), out: { causal: pair(), full: pair() },
        grads: { dqNope: make([b, n, h, D_NOPE]), dqPe: make([b, n, h, D_ROPE]), dkNope: make([b, n, h, D_NOPE]), dkPe: make([b, n, 1, D_ROPE]), dv: make([b, n, h, D_V]) },
      };
      for (const t of [set.qNope, set.qPe, set.kNope, set.kPe, set.v, set.dout]) fillRandom(ctx, t, chunk, (seed += 7919));
      for (const causal of [true, false]) {
        const r = causal ? set.out.causal : set.out.full;
        attention.forward(kernels, r.o, r.lse, set.qNope, set.qPe, set.kNope, set.kPe, set.v, { causal, scale });
      }
      sets.push(set);
    }
    const reps = kinds.length > 1 || n > 8192 ? 10 : 30;
    let next = 0;
    const fwd = timeMs(ctx, reps, () => {
      for (const kind of kinds) {
        const x = sets[next++ % nSets]!, r = kind === 'diagonal' ? x.out.causal : x.out.full;
        attention.forward(kernels, r.o, r.lse, x.qNope, x.qPe, x.kNope, x.kPe, x.v, { causal: kind === 'diagonal', scale });
      }
    });
    const bwd = timeMs(ctx, reps, () => {
      for (const kind of kinds) {
        const x = sets[next++ % nSets]!, r = kind === 'diagonal' ? x.out.causal : x.out.full;
        attention.backward(kernels, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, r.o, r.lse, { causal: kind === 'diagonal', scale });
      }
    });
    return { fwd, bwd };
  } finally {
    for (const t of owned) t.dispose();
  }
}

export interface RingBenchRow {
  s: number;
  cp: number;
  /** The rank's blocks back to back; the whole-sequence kernel at s; one diagonal and one full block alone. */
  rank: Timed;
  whole: Timed;
  diagonal: Timed;
  full: Timed;
}

export interface RingBenchOptions {
  cp: number;
  seqs?: readonly number[];
  rounds?: number;
  log?: (line: string) => void;
}

/** Runs the ring-block benchmark on this process's GPU and prints its table; returns the rows. */
export async function runRingAttentionBench(opts: RingBenchOptions): Promise<RingBenchRow[]> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const cp = opts.cp;
  if (!(Number.isInteger(cp) && cp >= 2)) throw new Error(`bench attention --cp ${cp}: give the context-parallel ranks to model, an integer ≥ 2 (2 or 4)`);
  const seqs = opts.seqs ?? [4096, 8192, 16384];
  for (const s of seqs) zigzagChunk(s, cp);
  const rounds = opts.rounds ?? 3;
  if (!cudaAvailable()) throw new Error('bench attention needs a CUDA GPU: libcuda did not load or no device is visible');
  const b = 1, h = 16;
  const be = new CudaBackend(new CudaContext());
  const kernels = chooseMlaKernels({ arch: be.ctx.arch, computeCapability: be.ctx.computeCapability, dtype: 'bf16', dNope: D_NOPE, dRope: D_ROPE, dV: D_V, request: 'auto' });
  if (kernels === 'generic') throw new Error(`bench attention times the tensor-core MLA kernels; ${be.ctx.name} has none (compute capability 8.0 or later)`);
  const attention = new MlaAttentionLauncher(be.ctx, be.allocator);
  const kinds = rankBlocks(cp).map((x) => x.kind);
  log(`ring attention blocks on ${be.ctx.description}: MLA b=${b} h=${h} dq=192 dv=128 bf16, ${kernels} kernels, cp=${cp} zigzag: ` +
    `a rank computes ${kinds.filter((k) => k === 'diagonal').length} causal-diagonal + ${kinds.filter((k) => k === 'full').length} full blocks of s/${2 * cp}; median of ${rounds} rounds`);
  const chunk = randomBf16Chunk(1 << 22, 0x9e3779b9);
  const byRound: RingBenchRow[][] = [];
  for (let round = 0; round < rounds; round++) {
    byRound.push(seqs.map((s) => {
      const c = s / (2 * cp);
      const row: RingBenchRow = {
        s, cp,
        whole: timeBlocks(be, attention, kernels, b, h, s, ['diagonal'], chunk),
        rank: timeBlocks(be, attention, kernels, b, h, c, kinds, chunk),
        diagonal: timeBlocks(be, attention, kernels, b, h, c, ['diagonal'], chunk),
        full: timeBlocks(be, attention, kernels, b, h, c, ['full'], chunk),
      };
      be.allocator.releaseCached();
      return row;
    }));
  }
  const med = (i: number, pick: (r: RingBenchRow) => number) => median(byRound.map((r) => pick(r[i]!)));
  const rows = seqs.map((s, i): RingBenchRow => {
    const t = (k: 'rank' | 'whole' | 'diagonal' | 'full'): Timed => ({ fwd: med(i, (r) => r[k].fwd), bwd: med(i, (r) => r[k].bwd) });
    return { s, cp, rank: t('rank'), whole: t('whole'), diagonal: t('diagonal'), full: t('full') };
  });
  const header = ['s', 'cp', 'whole fwd ms / TFLOPS', 'rank fwd ms / TFLOPS', 'fwd ratio', 'whole bwd ms / TFLOPS', 'rank bwd ms / TFLOPS', 'bwd ratio',
    'diag + full fwd ms', 'sum of blocks fwd / bwd ms'];
  log(`| ${header.join(' | ')} |`);
  log(`|${header.map(() => '---').join('|')}|`);
  for (const r of rows) {
    const whole = attentionFlops(b, h, r.s), rank = whole / cp;
    const tf = (flops: number, ms: number) => flops / ms / 1e9;
    const nDiag = kinds.filter((k) => k === 'diagonal').length, nFull = kinds.length - nDiag;
    const sum = (k: 'fwd' | 'bwd') => nDiag * r.diagonal[k] + nFull * r.full[k];
    const ratio = (k: 'fwd' | 'bwd') => tf(rank, r.rank[k]) / tf(whole, r.whole[k]);
    log(`| ${[
      r.s, r.cp,
      `${r.whole.fwd.toFixed(3)} / ${tf(whole, r.whole.fwd).toFixed(0)}`, `${r.rank.fwd.toFixed(3)} / ${tf(rank, r.rank.fwd).toFixed(0)}`, `${ratio('fwd').toFixed(3)}x`,
      `${r.whole.bwd.toFixed(3)} / ${tf(2.5 * whole, r.whole.bwd).toFixed(0)}`, `${r.rank.bwd.toFixed(3)} / ${tf(2.5 * rank, r.rank.bwd).toFixed(0)}`, `${ratio('bwd').toFixed(3)}x`,
      `${r.diagonal.fwd.toFixed(3)} + ${r.full.fwd.toFixed(3)}`, `${sum('fwd').toFixed(3)} / ${sum('bwd').toFixed(3)}`,
    ].join(' | ')} |`);
  }
  log('target (issue 14): rank TFLOP/s ≥ 0.95× the whole-sequence kernel\'s, forward and backward');
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runRingAttentionBench({ cp: Number(process.argv[2] ?? 2), ...(process.argv[3] ? { seqs: process.argv[3].split(',').map(Number) } : {}) });
}
