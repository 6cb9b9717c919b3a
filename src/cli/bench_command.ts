// `moetrain bench gemm [--grouped] | attention | train | simulate`: the benchmarks of bench/, on the GPU.
//
// bench/ is its own entry point above src/: it imports src/, never the reverse. So this command
// loads the compiled benchmark file by a path computed at run time (dist/src/cli/ → dist/bench/)
// and checks that it exports the function it calls; TypeScript sees no import from src/ into bench/.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ParsedArgs } from './args.js';

/** The function `exported` of dist/bench/<name>.js (untyped: this side cannot import its type). */
async function loadBench(name: 'gemm' | 'gemm_grouped' | 'attention' | 'attention_ring' | 'train' | 'simulate', exported: string): Promise<Function> {
  const url = new URL(`../../bench/${name}.js`, import.meta.url);
  const file = fileURLToPath(url);
  if (!existsSync(file)) throw new Error(`benchmark ${name}: ${file} does not exist; build the package (npm run build), which compiles bench/ into dist/bench/`);
  const module: Record<string, unknown> = await import(url.href);
  const run = module[exported];
  if (typeof run !== 'function') throw new Error(`internal: ${file} does not export ${exported}()`);
  return run;
}

export async function benchCommand(args: ParsedArgs): Promise<void> {
  const [what] = args.positional;
  switch (what) {
    case 'gemm':
      if (args.flags.grouped === 'true') (await loadBench('gemm_grouped', 'runGroupedGemmBench'))({});
      else (await loadBench('gemm', 'runGemmBench'))({});
      return;
    case 'attention':
      if (args.flags.cp !== undefined) await (await loadBench('attention_ring', 'runRingAttentionBench'))({
        cp: Number(args.flags.cp), oneLaunchOnly: args.flags.one_launch === 'true',
        ...(args.flags.batch !== undefined ? { batch: Number(args.flags.batch) } : {}),
      });
      else await (await loadBench('attention', 'runAttentionBench'))();
      return;
    case 'train':
      await (await loadBench('train', 'runTrainBench'))(args.flags);
      return;
    case 'simulate':
      await (await loadBench('simulate', 'runSimulateBench'))(args.flags);
      return;
    default:
      throw new Error(`unknown benchmark "${what ?? ''}"; choose gemm, attention, train or simulate`);
  }
}
