// The command-line grammar (src/cli/args.ts): both spellings of a name, boolean flags without a
// value, --name=value, -h/--help anywhere, `--` pass-through, required options and positionals,
// stray words and unknown options as Errors that name the word or suggest the closest name; and
// the training options derived from the training config (every field, its default, a help line).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatHelp, parseCommandLine, usageLine, type CommandSpec } from '../src/cli/args.js';
import { trainCommandSpec } from '../src/cli/train_options.js';
import { defaultTrainConfig, trainOptions } from '../src/train/config.js';

const SPEC: CommandSpec = {
  name: 'demo',
  summary: 'A command for the tests.',
  positionals: [{ name: 'RUN_DIR', help: 'a folder', required: true }],
  options: [
    { name: 'max_shard_gb', value: 'N', default: '5', help: 'size' },
    { name: 'skip_bad_lines', value: null, help: 'a flag' },
    { name: 'out', value: 'FILE', required: true, help: 'where' },
  ],
};

test('args: snake_case and kebab-case name the same option; values stay as written', () => {
  for (const argv of [['d', '--max_shard_gb', '2', '--out', 'x-y_z'], ['d', '--max-shard-gb', '2', '--out=x-y_z'], ['--max-shard-gb=2', 'd', '--out', 'x-y_z']]) {
    const a = parseCommandLine(SPEC, argv);
    assert.deepEqual(a.flags, { max_shard_gb: '2', out: 'x-y_z' }, argv.join(' '));
    assert.deepEqual(a.positional, ['d']);
    assert.equal(a.help, false);
  }
  // A negative number is a value, not an option.
  assert.equal(parseCommandLine(SPEC, ['d', '--out', 'o', '--max_shard_gb', '-1']).flags['max_shard_gb'], '-1');
});

test('args: boolean flags take no value; =true / =false work', () => {
  assert.equal(parseCommandLine(SPEC, ['d', '--out', 'o', '--skip-bad-lines']).flags['skip_bad_lines'], 'true');
  assert.equal(parseCommandLine(SPEC, ['d', '--skip_bad_lines', '--out', 'o']).flags['skip_bad_lines'], 'true');
  assert.equal(parseCommandLine(SPEC, ['d', '--out', 'o', '--skip-bad-lines=false']).flags['skip_bad_lines'], 'false');
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--skip-bad-lines', 'true']),
    /unexpected word "true" after --skip-bad-lines, which takes no value \(write --skip-bad-lines, or --skip-bad-lines=false\)/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--skip_bad_lines=yes']), /--skip_bad_lines takes no value .* got "yes"/);
});

test('args: stray words, unknown options, missing values and required inputs are Errors that say what to do', () => {
  assert.throws(() => parseCommandLine(SPEC, ['d', 'extra', '--out', 'o']), /unexpected word "extra": moetrain demo takes only RUN_DIR; options are written --name value \(moetrain demo --help lists its options\)/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--max-shard-gbb', '3']), /unknown option --max-shard-gbb for moetrain demo \(did you mean --max-shard-gb\?\)/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--max_shard_gbb', '3']), /\(did you mean --max_shard_gb\?\)/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--zzzzzzzz', '3']), (e: Error) => /unknown option --zzzzzzzz for moetrain demo; moetrain demo --help/.test(e.message));
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '-x']), /unknown option -x: options are written --name/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out']), /option --out needs a value \(e\.g\. --out FILE;/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--max_shard_gb', '--out', 'o']), /option --max_shard_gb needs a value \(e\.g\. --max_shard_gb 5;/);
  assert.throws(() => parseCommandLine(SPEC, ['--out', 'o']), /moetrain demo needs RUN_DIR: a folder; usage: moetrain demo RUN_DIR --out FILE \[options\]/);
  assert.throws(() => parseCommandLine(SPEC, ['d']), /moetrain demo needs --out FILE: where;/);
  assert.throws(() => parseCommandLine(SPEC, ['d', '--out', 'o', '--', 'x']), /takes nothing after "--"/);
  const none: CommandSpec = { ...SPEC, positionals: [], options: [] };
  assert.throws(() => parseCommandLine(none, ['100']), /unexpected word "100": moetrain demo takes no positional words/);
});

test('args: --help anywhere wins; -- hands the rest on', () => {
  assert.equal(parseCommandLine(SPEC, ['--bogus', '-h']).help, true);
  assert.equal(parseCommandLine(SPEC, ['--help']).help, true);
  const launch: CommandSpec = { ...SPEC, passThrough: 'COMMAND ...' };
  const a = parseCommandLine(launch, ['d', '--out', 'o', '--', 'train', '--help', '--steps', '3']);
  assert.equal(a.help, false);
  assert.deepEqual(a.rest, ['train', '--help', '--steps', '3']);
  assert.equal(usageLine(launch), 'moetrain demo RUN_DIR --out FILE [options] -- COMMAND ...');
});

test('args: help lists every option with its default and help line', () => {
  const h = formatHelp(SPEC);
  assert.match(h, /^usage: moetrain demo RUN_DIR --out FILE \[options\]\n\nA command for the tests\./);
  assert.match(h, /\n {2}--max_shard_gb N +size \(default 5\)\n/);
  assert.match(h, /\n {2}--skip_bad_lines +a flag\n/);
  assert.match(h, /\n {2}--out FILE +\(required\) where\n/);
  assert.match(h, /\n {2}-h, --help +print this help/);
});

/** Every leaf of the default training config, dotted: the fields a user can set. */
function configLeaves(o: Record<string, unknown>, prefix = ''): [string, unknown][] {
  return Object.entries(o).flatMap(([k, v]) => (v !== null && typeof v === 'object' && !Array.isArray(v)
    ? configLeaves(v as Record<string, unknown>, `${prefix}${k}.`) : [[`${prefix}${k}`, v] as [string, unknown]]));
}

test('train options: one per config field, with its default and a help line, and nothing else but --config', () => {
  const leaves = configLeaves(defaultTrainConfig() as unknown as Record<string, unknown>);
  const options = trainOptions();
  assert.deepEqual(options.map((o) => o.name).sort(), leaves.map(([k]) => k).sort(), 'the schema and the defaults name the same fields');
  for (const o of options) assert.ok(o.help.length > 10, `training option ${o.name} has no help line beside SCHEMA in src/train/config.ts`);
  const spec = trainCommandSpec();
  assert.deepEqual(spec.options.map((o) => o.name), ['config', ...options.map((o) => o.name)]);
  const help = formatHelp(spec);
  for (const [name, value] of leaves) {
    const shown = typeof value === 'string' ? value : JSON.stringify(value);
    assert.match(help, new RegExp(`\\n  --${name.replace(/\./g, '\\.')} [^\\n]*(\\n {34})?[^\\n]*\\(default ${shown.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)`), `--${name} with default ${shown}`);
  }
  // Kinds come from the checks: choices list their values, numbers take N.
  const byName = new Map(spec.options.map((o) => [o.name, o]));
  assert.equal(byName.get('device')!.value, 'auto|cpu|cuda');
  assert.equal(byName.get('steps')!.value, 'N');
  assert.equal(byName.get('max_epochs')!.value, 'N');
  assert.equal(byName.get('init_from')!.value, 'PATH');
  // Both spellings of a training option.
  assert.deepEqual(parseCommandLine(spec, ['--seq-len', '32', '--optimizer.weight-decay', '0', '--run_dir', 'r']).flags, { seq_len: '32', 'optimizer.weight_decay': '0', run_dir: 'r' });
  assert.throws(() => parseCommandLine(spec, ['--stepz', '5']), /unknown option --stepz for moetrain train \(did you mean --steps\?\)/);
  assert.throws(() => parseCommandLine(spec, ['--optimizer.lrr', '5']), /\(did you mean --optimizer\.lr\?\)/);
});
