// End-to-end training on the CPU: the log line format and the summary line, the loss falling
// below the corpus's unigram entropy, resume equivalence (also after the run folder was moved),
// runs over more than one epoch, and the bad-input errors of the command line.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
const tmp = (): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-test-'));
  made.push(d);
  return d;
};

function run(args: string[], cwd = packageRoot()) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd, encoding: 'utf8', env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// The reference system's line, field by field (DESIGN.md).
const LOG_LINE = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \| INFO \| step \d{8}\/\d{8} \| step-time \d+\.\d{3} sec \| cross-entropy-loss \d+\.\d{4} \| load-balance-loss \d+\.\d{6} \| learning-rate \d\.\d{6}e[+-]\d{2} \| gradient-norm \d+\.\d{4} \| tokens-per-second \d{1,3}(,\d{3})* \| peak-gpu-memory \d+\.\d{2} GB( \| .*)?$/;

const lines = (out: string) => out.split('\n').filter((l) => l.includes('| INFO |'));
const losses = (out: string) => lines(out).map((l) => Number(/cross-entropy-loss (\S+)/.exec(l)![1]));

test('the demo run logs exact lines and its loss falls well below the unigram entropy', () => {
  const dir = tmp();
  const r = run(['train', '--device', 'cpu', '--steps', '40', '--run_dir', dir]);
  assert.equal(r.code, 0, r.err);
  const ls = lines(r.out);
  assert.equal(ls.length, 40);
  for (const l of ls) assert.match(l, LOG_LINE);
  assert.match(ls[0]!, /step 00000001\/00000040/);
  const entropy = Number(/unigram entropy (\d+\.\d+) nats\/token/.exec(r.out)![1]);
  const last = losses(r.out).at(-1)!;
  // 40 steps of 1,024 tokens reach ~2.3 nats; the byte-unigram entropy is ~3.15 nats.
  assert.ok(last < entropy - 0.5, `final loss ${last} is not 0.5 nats below the unigram entropy ${entropy}`);
  const jsonl = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; crossEntropy: number });
  assert.equal(jsonl.length, 40);
  assert.equal(jsonl[39]!.crossEntropy.toFixed(4), last.toFixed(4));
  const best = Math.min(...losses(r.out));
  const summary = new RegExp(`^moetrain: summary: steps 1-40 \\(40\\), 40,960 tokens in \\d+\\.\\d s; final loss ${last.toFixed(4)}, best ${best.toFixed(4)} at step \\d+; mean [\\d,]+ tokens/s$`, 'm');
  assert.match(r.out, summary);
});

test('an interrupted and resumed run logs the same losses as one that ran straight through', () => {
  const a = tmp(), b = tmp();
  const common = ['train', '--device', 'cpu', '--steps', '8', '--seq_len', '32', '--micro_batch_size', '4', '--global_batch_size', '8', '--schedule.warmup_steps', '2'];
  const straight = run([...common, '--run_dir', a]);
  assert.equal(straight.code, 0, straight.err);
  // First half: a run that checkpoints at step 4 and stops there (steps=4 with the same schedule
  // would change the cosine, so stop by deleting the later checkpoint instead).
  const first = run([...common, '--run_dir', b, '--checkpoint_every', '4', '--keep_checkpoints', '0']);
  assert.equal(first.code, 0, first.err);
  fs.rmSync(path.join(b, 'checkpoints', 'step-00000008'), { recursive: true });
  // A leftover temporary folder (a crash mid-save) must not be taken for a checkpoint.
  fs.mkdirSync(path.join(b, 'checkpoints', 'step-00000006.tmp-999'));
  const resumed = run([...common, '--run_dir', b, '--checkpoint_every', '4']);
  assert.equal(resumed.code, 0, resumed.err);
  assert.match(resumed.out, /resuming from .*step-00000004 \(step 4\)/);
  const full = losses(straight.out), tail = losses(resumed.out);
  assert.equal(tail.length, 4);
  assert.deepEqual(tail, full.slice(4));
  // metrics.jsonl holds each step once: steps 5-8 of the first run were dropped on resume.
  const steps = fs.readFileSync(path.join(b, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step);
  assert.deepEqual(steps, [1, 2, 3, 4, 5, 6, 7, 8]);
  const gn = (o: string) => lines(o).map((l) => /gradient-norm (\S+)/.exec(l)![1]);
  assert.deepEqual(gn(resumed.out), gn(straight.out).slice(4));
  assert.match(resumed.out, /^moetrain: summary: steps 5-8 \(4\), /m);
});

test('a run folder that was moved resumes and logs the same losses as one that ran straight through', () => {
  // A constant schedule: 4 steps then 8 follow the same learning rates as 8 straight.
  const common = ['train', '--device', 'cpu', '--seq_len', '32', '--micro_batch_size', '4', '--global_batch_size', '8', '--schedule.type', 'constant', '--schedule.warmup_steps', '2'];
  const straight = run([...common, '--steps', '8', '--run_dir', path.join(tmp(), 'straight')]);
  assert.equal(straight.code, 0, straight.err);
  const first = path.join(tmp(), 'first');
  const half = run([...common, '--steps', '4', '--run_dir', first]);
  assert.equal(half.code, 0, half.err);
  const moved = path.join(tmp(), 'moved', 'elsewhere');
  fs.mkdirSync(path.dirname(moved));
  fs.renameSync(first, moved);
  const resumed = run([...common, '--steps', '8', '--run_dir', moved]);
  assert.equal(resumed.code, 0, resumed.err);
  assert.match(resumed.out, /resuming from .*elsewhere\/checkpoints\/step-00000004 \(step 4\)/);
  assert.deepEqual(losses(resumed.out), losses(straight.out).slice(4));
  // The data folder was reused as it was: one source, still named where it was first made.
  const manifest = JSON.parse(fs.readFileSync(path.join(moved, 'demo-data', 'tokens', 'manifest.json'), 'utf8')) as { sources: { source: string }[] };
  assert.equal(manifest.sources.length, 1);
  assert.ok(manifest.sources[0]!.source.startsWith(first));
});

test('a run may read its data more than once: a new order each epoch, capped by --max_epochs', () => {
  const dir = tmp();
  const text = path.join(dir, 'small.txt');
  fs.writeFileSync(text, 'A small corpus for a run of several epochs. '.repeat(40)); // 1,760 bytes
  const tok = run(['tokenize', '--inputs', text, '--output', path.join(dir, 'tok')]);
  assert.equal(tok.code, 0, tok.err);
  // 1,761 tokens = 103 windows of 17; 32 sequences a step: 3.2 steps an epoch, 8 steps = 2.49 epochs.
  const common = ['train', '--device', 'cpu', '--data', path.join(dir, 'tok'), '--seq_len', '16', '--micro_batch_size', '32', '--global_batch_size', '32', '--steps', '8', '--schedule.warmup_steps', '2'];
  const r = run([...common, '--run_dir', path.join(dir, 'run')]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /the run reads its data 2\.49 times \(103 sequences per epoch, a fresh order each epoch\); --max_epochs caps it/);
  assert.equal(lines(r.out).length, 8);
  assert.ok(losses(r.out).every(Number.isFinite));
  const capped = run([...common, '--max_epochs', '2', '--run_dir', path.join(dir, 'run2')]);
  assert.equal(capped.code, 1);
  assert.match(capped.err, /\(2\.49 epochs\), more than the 2 epoch\(s\) allowed; .*allow more epochs \(--max_epochs 3, or 0 for no cap\)/);
  const enough = run([...common, '--max-epochs', '3', '--run_dir', path.join(dir, 'run3')]);
  assert.equal(enough.code, 0, enough.err);
  assert.doesNotMatch(enough.out, /--max_epochs caps it/);
  assert.deepEqual(losses(enough.out), losses(r.out));
});

function expectError(args: string[], pattern: RegExp, setup?: (dir: string) => void) {
  const dir = tmp();
  setup?.(dir);
  const r = run(args.map((a) => a.replace('$DIR', dir)));
  assert.notEqual(r.code, 0, `expected failure for ${args.join(' ')}`);
  const errLines = r.err.trim().split('\n');
  assert.equal(errLines.length, 1, `expected one error line, got:\n${r.err}`);
  assert.match(errLines[0]!, /^moetrain: error: /);
  assert.match(errLines[0]!, pattern);
  assert.ok(!fs.existsSync(path.join(dir, 'run', 'checkpoints')) || fs.readdirSync(path.join(dir, 'run', 'checkpoints')).length === 0, 'no checkpoint may be left');
}

test('bad input: unknown and mistyped options', () => {
  expectError(['train', '--device', 'cpu', '--stepz', '5', '--run_dir', '$DIR/run'], /unknown option --stepz for moetrain train \(did you mean --steps\?\)/);
  expectError(['train', '--config', '$DIR/run.json', '--run_dir', '$DIR/run'], /run\.json: unknown training option "stepz" \(did you mean "steps"\?\)/, (d) => fs.writeFileSync(path.join(d, 'run.json'), '{"stepz": 5}'));
  expectError(['train', '--device', 'cpu', '--optimizer.lr', '-1', '--run_dir', '$DIR/run'], /"optimizer.lr" must be a positive number/);
  expectError(['train', '--device', 'gpu', '--run_dir', '$DIR/run'], /"device" must be one of "auto", "cpu", "cuda"/);
  expectError(['train', '--micro_batch_size', '3', '--global_batch_size', '8', '--run_dir', '$DIR/run'], /global_batch_size \(8\) must be a multiple of micro_batch_size \(3\)/);
  expectError(['frobnicate'], /unknown command "frobnicate"/);
});

test('bad input: model configs', () => {
  const cfg = (dir: string, patch: Record<string, unknown>) => {
    const base = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...base, ...patch }));
  };
  expectError(['train', '--device', 'cpu', '--model', '$DIR/config.json', '--run_dir', '$DIR/run'], /unknown field "hiden_size" \(did you mean "hidden_size"\?\)/, (d) => cfg(d, { hiden_size: 2048 }));
  expectError(['train', '--device', 'cpu', '--model', '$DIR/config.json', '--run_dir', '$DIR/run'], /num_experts_per_tok \(70\) is larger than n_routed_experts \(64\)/, (d) => cfg(d, { num_experts_per_tok: 70 }));
  expectError(['train', '--device', 'cpu', '--model', '$DIR/config.json', '--run_dir', '$DIR/run'], /num_key_value_heads \(8\) must equal num_attention_heads \(16\)/, (d) => cfg(d, { num_key_value_heads: 8 }));
  expectError(['train', '--device', 'cpu', '--model', '$DIR/missing.json', '--run_dir', '$DIR/run'], /missing.json: cannot read the model config/);
  expectError(['train', '--device', 'cpu', '--model', '$DIR/config.json', '--run_dir', '$DIR/run'], /not valid JSON/, (d) => fs.writeFileSync(path.join(d, 'config.json'), '{ "hidden_size": '));
});

test('bad input: data', () => {
  expectError(['train', '--device', 'cpu', '--data', '$DIR/nothing', '--run_dir', '$DIR/run'], /has no manifest.json; create it with moetrain tokenize/);
  // A data folder too small for the run: say what is available and what is needed.
  const small = (d: string) => {
    fs.writeFileSync(path.join(d, 'a.txt'), 'a small text that makes only a few windows. '.repeat(20));
    const r = run(['tokenize', '--inputs', path.join(d, 'a.txt'), '--output', path.join(d, 'tok')]);
    assert.equal(r.code, 0, r.err);
  };
  expectError(['train', '--device', 'cpu', '--data', '$DIR/tok', '--steps', '50', '--run_dir', '$DIR/run'], /windows/, small);
  // A corrupt shard: the header's magic bytes overwritten.
  const corrupt = (d: string) => {
    small(d);
    const shard = fs.readdirSync(path.join(d, 'tok')).find((f) => f.endsWith('.tokens'))!;
    const fd = fs.openSync(path.join(d, 'tok', shard), 'r+');
    fs.writeSync(fd, Buffer.from('GARBAGE!'), 0, 8, 0);
    fs.closeSync(fd);
  };
  expectError(['train', '--device', 'cpu', '--data', '$DIR/tok', '--steps', '1', '--seq_len', '16', '--micro_batch_size', '1', '--global_batch_size', '1', '--schedule.warmup_steps', '0', '--run_dir', '$DIR/run'], /\.tokens/, corrupt);
});

test('bad input: an unwritable run directory', () => {
  // A path below a regular file cannot be created, even by root.
  expectError(['train', '--device', 'cpu', '--run_dir', '$DIR/file/run'], /run directory .*file\/run is not writable \(ENOTDIR\)/, (d) => fs.writeFileSync(path.join(d, 'file'), ''));
});

test('bad input: resuming a run with other data settings is refused', () => {
  const dir = tmp();
  const base = ['train', '--device', 'cpu', '--steps', '4', '--schedule.warmup_steps', '0', '--micro_batch_size', '2', '--global_batch_size', '2', '--checkpoint_every', '2', '--run_dir', dir];
  const first = run([...base, '--seq_len', '16']);
  assert.equal(first.code, 0, first.err);
  fs.rmSync(path.join(dir, 'checkpoints', 'step-00000004'), { recursive: true });
  const again = run([...base, '--seq_len', '24']);
  assert.notEqual(again.code, 0);
  assert.match(again.err, /trained on other data or another seed\/sequence length/);
});
