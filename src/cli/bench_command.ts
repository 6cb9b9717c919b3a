// `moetrain bench gemm | attention | train`: the benchmarks of bench/, on the GPU.
import type { ParsedArgs } from './args.js';

export async function benchCommand(args: ParsedArgs): Promise<void> {
  const [what] = args.positional;
  switch (what) {
    case 'gemm': {
      const { runGemmBench } = await import('../../bench/gemm.js');
      runGemmBench({});
      return;
    }
    case 'attention': {
      const { runAttentionBench } = await import('../../bench/attention.js');
      await runAttentionBench();
      return;
    }
    case 'train': {
      const { runTrainBench } = await import('../../bench/train.js');
      await runTrainBench(args.flags);
      return;
    }
    default:
      throw new Error(`unknown benchmark "${what ?? ''}"; choose gemm, attention or train`);
  }
}
