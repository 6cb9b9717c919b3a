#!/usr/bin/env node
// The moetrain command line: train, tokenize, convert, bench. A user-caused error prints one
// line naming the problem and the fix, and exits with status 1.
import { parseArgs } from './args.js';
import { trainCommand } from './train_command.js';

const USAGE = `usage: moetrain <command> [options]

  train      [--config run.json] [--<option> value ...]   train (no options: the built-in demo on this machine)
  tokenize   --inputs a.jsonl[,dir,...] --output DIR [--tokenizer tokenizer.json|bytes] [--workers N] [--skip-bad-lines]
  convert    --from DIR --to DIR [--format hf|moetrain]
  bench      gemm | attention | train
  check-checkpoint DIR                                     verify a checkpoint (or every one of a run folder): exit 0 when intact

Training options are the fields of the training config (src/train/config.ts), e.g.
  --steps 200 --seq_len 128 --optimizer.lr 1e-3 --device cpu --run_dir runs/x`;

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'train':
      return trainCommand(parseArgs(rest).flags);
    case 'tokenize': {
      const { tokenizeCommand } = await import('./tokenize_command.js');
      return tokenizeCommand(parseArgs(rest, ['skip-bad-lines']).flags);
    }
    case 'convert': {
      const { convertCommand } = await import('./convert_command.js');
      return convertCommand(parseArgs(rest).flags);
    }
    case 'check-checkpoint': {
      const { checkCheckpointCommand } = await import('./check_checkpoint_command.js');
      const args = parseArgs(rest);
      return checkCheckpointCommand(args.positional, args.flags);
    }
    case 'bench': {
      const { benchCommand } = await import('./bench_command.js');
      return benchCommand(parseArgs(rest));
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return;
    default:
      throw new Error(`unknown command "${command}"; run moetrain help`);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  const msg = e instanceof Error ? e.message : String(e);
  console.error(`moetrain: error: ${msg}`);
  if (process.env['MOETRAIN_DEBUG'] && e instanceof Error) console.error(e.stack);
  process.exit(1);
});
