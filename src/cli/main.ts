#!/usr/bin/env node
// The moetrain command line: train, tokenize, convert, plot, bench, launch, check-checkpoint. Each command's options are
// declared once in its CommandSpec (args.ts), which parses them and prints its --help. A
// user-caused error prints one line naming the problem and the fix, and exits with status 1.
import fs from 'node:fs';
import { formatHelp, parseCommandLine, type CommandSpec, type ParsedArgs } from './args.js';
import { trainCommandSpec } from './train_options.js';

const USAGE = `usage: moetrain <command> [options]          moetrain <command> --help lists a command's options

commands:
  train      train a model; with no options, the built-in demo (a tiny DeepSeek-V2, about a minute on a CPU)
  tokenize   text corpora (.txt, .jsonl, .jsonl.zst) → packed token shards
  convert    Hugging Face DeepseekV2 checkpoints ⇄ moetrain weights
  plot       an SVG of a run's loss, learning rate, gradient norm and tokens/s
  bench      GPU benchmarks: gemm | attention | train
  estimate-memory   per-rank GPU memory of a model on a mesh (persistent and peak, by part), allocating nothing
  launch     start N ranks of a moetrain command on this node (torchrun's contract): launch --nproc-per-node N -- train ...
  check-checkpoint  verify a checkpoint (or each of a run folder): sizes, checksums, finite values; exit 0 when intact

  --version  print moetrain's version

examples:
  moetrain train --steps 200 --seq_len 128 --optimizer.lr 1e-3 --device cpu --run_dir runs/x
  moetrain tokenize --inputs corpus/,extra.jsonl.zst --output data/tok --tokenizer tokenizer.json
  moetrain plot runs/x`;

/** The version in package.json (two folders above dist/src/cli). */
function version(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Parses argv for `spec`; prints the help and returns null when -h/--help was given. */
function parse(spec: CommandSpec, argv: readonly string[]): ParsedArgs | null {
  const args = parseCommandLine(spec, argv);
  if (!args.help) return args;
  console.log(formatHelp(spec));
  return null;
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'train': {
      const args = parse(trainCommandSpec(), rest);
      if (args === null) return;
      const { trainCommand } = await import('./train_command.js');
      return trainCommand(args.flags);
    }
    case 'tokenize': {
      const { tokenizeCommand, TOKENIZE_COMMAND } = await import('./tokenize_command.js');
      const args = parse(TOKENIZE_COMMAND, rest);
      return args === null ? undefined : tokenizeCommand(args.flags);
    }
    case 'convert': {
      const { convertCommand, CONVERT_COMMAND } = await import('./convert_command.js');
      const args = parse(CONVERT_COMMAND, rest);
      return args === null ? undefined : convertCommand(args.flags);
    }
    case 'plot': {
      const { plotCommand, PLOT_COMMAND } = await import('./plot_command.js');
      const args = parse(PLOT_COMMAND, rest);
      return args === null ? undefined : plotCommand(args.positional[0]!, args.flags);
    }
    case 'bench': {
      const { BENCH_COMMAND } = await import('./bench_options.js');
      const args = parse(BENCH_COMMAND, rest);
      if (args === null) return;
      const { benchCommand } = await import('./bench_command.js');
      return benchCommand(args);
    }
    case 'estimate-memory': {
      const { estimateCommand, ESTIMATE_COMMAND } = await import('./estimate_command.js');
      const args = parse(ESTIMATE_COMMAND, rest);
      return args === null ? undefined : estimateCommand(args.flags);
    }
    case 'launch': {
      const { launchCommand, LAUNCH_COMMAND } = await import('./launch_command.js');
      const args = parse(LAUNCH_COMMAND, rest);
      return args === null ? undefined : launchCommand(args);
    }
    case 'check-checkpoint': {
      const { checkCheckpointCommand, CHECK_CHECKPOINT_COMMAND } = await import('./check_checkpoint_command.js');
      const args = parse(CHECK_CHECKPOINT_COMMAND, rest);
      return args === null ? undefined : checkCheckpointCommand(args.positional[0]!);
    }
    case '--version':
    case 'version':
      console.log(`moetrain ${version()}`);
      return;
    case 'help':
      if (rest.length > 0) return main([rest[0]!, '--help']);
      console.log(USAGE);
      return;
    case undefined:
    case '--help':
    case '-h':
      console.log(USAGE);
      return;
    default:
      throw new Error(`unknown command "${command}"; the commands are train, tokenize, convert, plot, bench, launch and check-checkpoint (moetrain --help)`);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  const msg = e instanceof Error ? e.message : String(e);
  console.error(`moetrain: error: ${msg}`);
  if (process.env['MOETRAIN_DEBUG'] && e instanceof Error) console.error(e.stack);
  process.exit(1);
});
