// The options of `moetrain train`: --config plus one option per training config field, derived
// from src/train/config.ts (trainOptions(): SCHEMA order, defaultTrainConfig() defaults, the
// help line kept beside SCHEMA), so the command line, --help and the config cannot drift apart.
import type { CommandSpec, OptionSpec } from './args.js';
import { trainOptions, type TrainOptionInfo } from '../train/config.js';

/** The value's placeholder in help; null makes the option a flag that takes no value. */
function placeholder(o: TrainOptionInfo): string | null {
  if (o.choices !== null) return o.choices.join('|');
  switch (o.kind) {
    case 'flag': return null;
    case 'number': return 'N';
    case 'text': return 'PATH';
    default: return o.kind satisfies never;
  }
}

function shownDefault(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function trainCommandSpec(): CommandSpec {
  const options: OptionSpec[] = [
    { name: 'config', value: 'FILE', help: 'a JSON file of training config fields (nested as below: {"optimizer": {"lr": 1e-3}}); options given here override it' },
  ];
  for (const o of trainOptions()) options.push({ name: o.name, value: placeholder(o), default: shownDefault(o.default), help: o.help });
  return {
    name: 'train',
    summary: 'Train a model. With no options: the built-in demo (a tiny DeepSeek-V2 on a generated corpus, about a minute on a CPU).',
    positionals: [],
    options,
    notes: [
      'Each step prints one log line and appends the same numbers to RUN_DIR/metrics.jsonl; the run ends',
      'with a summary line. peak-gpu-memory is the backend\'s peak of live tensor bytes during the step:',
      'device memory on a GPU, host memory held by tensors with --device cpu. A run whose RUN_DIR holds',
      'a checkpoint resumes from the latest one; the folder may be moved or copied. See the curves with',
      '`moetrain plot RUN_DIR`.',
    ],
  };
}
