// The command line as a user meets it (spawned CLI): `--help` for every command, `--version`,
// both spellings of tokenize's and convert's options, boolean flags, stray words, `convert
// --from` a missing folder, and the one-line warning when exporting norm_topk_prob: true.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-cli-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('cli: every command prints its help; the top level lists the commands; --version', () => {
  const expected: Record<string, RegExp[]> = {
    train: [/usage: moetrain train \[options\]/, /--steps N +optimizer steps in the whole run \(default 100\)/, /--max_epochs N/, /peak-gpu-memory is the backend's peak/],
    tokenize: [/usage: moetrain tokenize --inputs PATHS --output DIR \[options\]/, /--eos_token TEXT/, /--shard_tokens N/, /--skip_bad_lines +skip/, /uint16/],
    convert: [/usage: moetrain convert --from DIR --to DIR --format hf\|moetrain \[options\]/, /--config FILE/, /--dtype bf16\|f32/, /--max_shard_gb N/, /norm_topk_prob/],
    bench: [/usage: moetrain bench BENCHMARK \[options\]/, /gemm \| attention \| train/, /--profile +train:/],
    plot: [/usage: moetrain plot RUN_DIR \[options\]/, /--out FILE +the SVG file to write \(default RUN_DIR\/loss\.svg\)/],
  };
  for (const [command, patterns] of Object.entries(expected)) {
    for (const args of [[command, '--help'], [command, '-h'], ['help', command]]) {
      const r = run(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.err, '');
      for (const p of patterns) assert.match(r.out, p, `${args.join(' ')}`);
    }
  }
  const top = run(['--help']);
  assert.equal(top.code, 0);
  for (const c of Object.keys(expected)) assert.match(top.out, new RegExp(`\\n  ${c} +\\S`), c);
  assert.match(top.out, /moetrain <command> --help/);
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  const v = run(['--version']);
  assert.equal(v.code, 0);
  assert.equal(v.out, `moetrain ${pkg.version}\n`);
});

test('cli: both spellings, boolean flags, stray words and unknown options', (t) => {
  const dir = tempDir(t);
  const bad = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(bad, '{"text": "one"}\nnot json\n{"text": "two"}\n');
  let n = 0;
  for (const flag of ['--skip-bad-lines', '--skip_bad_lines', '--skip-bad-lines=true']) {
    for (const shard of ['--shard-tokens', '--shard_tokens']) {
      const o = path.join(dir, `o${n++}`);
      const r = run(['tokenize', '--inputs', bad, '--output', o, flag, shard, '4', '--workers', '0']);
      assert.equal(r.code, 0, `${flag} ${shard}: ${r.err}`);
      assert.match(r.err, /skipped 1 bad line\(s\)/);
      assert.match(r.err, new RegExp(`skipped lines: \\S*bad\\.jsonl:2\\n`));
      assert.equal(fs.readdirSync(o).filter((f) => f.endsWith('.tokens')).length, 2, 'shards of 4 tokens: "one"+EOS, "two"+EOS');
    }
  }
  const one = (args: string[], pattern: RegExp): void => {
    const r = run(args);
    assert.equal(r.code, 1, args.join(' '));
    const lines = r.err.trim().split('\n');
    assert.equal(lines.length, 1, r.err);
    assert.match(lines[0]!, /^moetrain: error: /);
    assert.match(lines[0]!, pattern);
  };
  one(['tokenize', '--inputs', bad, '--output', path.join(dir, 'x'), '--skip-bad-lines', 'yes'], /unexpected word "yes" after --skip-bad-lines, which takes no value/);
  one(['tokenize', '--inputs', bad, '--output', path.join(dir, 'x'), 'extra.jsonl'], /unexpected word "extra\.jsonl": moetrain tokenize takes no positional words/);
  one(['tokenize', '--input', bad], /unknown option --input for moetrain tokenize \(did you mean --inputs\?\)/);
  one(['tokenize', '--inputs', bad, '--output', path.join(dir, 'x'), '--eos-token', '</s>'], /--eos_token applies to an HF tokenizer/);
  one(['train', '--device', 'cpu', 'fast'], /unexpected word "fast": moetrain train takes no positional words/);
  one(['train', '--stepz', '5'], /unknown option --stepz for moetrain train \(did you mean --steps\?\)/);
  one(['train', '--steps'], /option --steps needs a value \(e\.g\. --steps 100;/);
  one(['convert', '--from', path.join(dir, 'missing'), '--to', path.join(dir, 'out'), '--format', 'hf'], /--from \S*missing does not exist/);
  one(['convert', '--from', dir, '--to', path.join(dir, 'out'), '--format', 'hf', '--max-shard-gb', '0'], /--max_shard_gb must be a positive number, got 0/);
  one(['convert', '--from', dir, '--to', path.join(dir, 'out')], /moetrain convert needs --format hf\|moetrain/);
  one(['plot', dir, 'again'], /unexpected word "again": moetrain plot takes only RUN_DIR/);
  one(['bench'], /moetrain bench needs BENCHMARK: gemm \| attention \| train/);
  one(['frobnicate'], /unknown command "frobnicate"/);
  assert.ok(!fs.existsSync(path.join(dir, 'x')), 'a refused command leaves nothing behind');
});

test('cli: exporting a model with norm_topk_prob true warns in one line', (t) => {
  const dir = tempDir(t);
  const runDir = path.join(dir, 'run');
  const r = run(['train', '--device', 'cpu', '--steps', '1', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2', '--schedule.warmup_steps', '0', '--run_dir', runDir]);
  assert.equal(r.code, 0, r.err);
  const ckpt = path.join(runDir, 'checkpoints', 'step-00000001');
  const plain = run(['convert', '--from', ckpt, '--to', path.join(dir, 'hf1'), '--format', 'hf', '--dtype', 'f32', '--max-shard-gb', '1']);
  assert.equal(plain.code, 0, plain.err);
  assert.equal(plain.err, '');
  const config = JSON.parse(fs.readFileSync(path.join(runDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfgFile = path.join(dir, 'config-norm.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...config, norm_topk_prob: true }));
  const warned = run(['convert', '--from', ckpt, '--to', path.join(dir, 'hf2'), '--format', 'hf', '--config', cfgFile]);
  assert.equal(warned.code, 0, warned.err);
  const lines = warned.err.trim().split('\n');
  assert.equal(lines.length, 1, warned.err);
  assert.match(lines[0]!, /^moetrain: warning: \S*config-norm\.json has norm_topk_prob true; transformers' DeepseekV2 ignores it/);
  assert.ok(fs.existsSync(path.join(dir, 'hf2', 'model.safetensors.index.json')));
});
