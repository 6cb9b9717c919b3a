// The lean recipe's evidence (docs/lean_recipe.md): two finished `moetrain train` runs of the
// tiny model that differ only in --recipe, compared. For each run it reads metrics.jsonl (the
// training-loss curve) and evaluates the final checkpoint on held-out batches: the batches of
// steps [steps, steps + eval) of the run's own data order, which no step of the run read while
// the run stays in its first epoch (checked). One training batch is a noisy measure of "the loss
// after N steps" (two runs that differ by one rounding differ by a few % on a given step late in
// training); the mean over many unseen batches is not. Prints one JSON line and writes an SVG of
// both curves and their relative gap.
//
//   node dist/bench/recipe_curves.js --default RUN_DIR --lean RUN_DIR --label demo [--eval 32] [--out curves.svg]
import fs from 'node:fs';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { noGrad } from '../src/autograd/tape.js';
import { prepareDemoData } from '../src/data/demo_data.js';
import { TokenDataset } from '../src/data/loader.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { niceTicks, tickLabel } from '../src/cli/plot_svg.js';
import { tidy } from '../src/tensor/scope.js';
import { listCheckpoints, readEntries } from '../src/train/checkpoint.js';
import { readCheckpointState } from '../src/train/checkpoint_format.js';
import { mergeTrainConfig, defaultTrainConfig, type TrainConfig } from '../src/train/config.js';
import { Training } from '../src/train/trainer.js';

interface Curve { step: number; loss: number }

function readCurve(runDir: string): Curve[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n')
    .map((l) => JSON.parse(l) as { step: number; crossEntropy: number }).map((r) => ({ step: r.step, loss: r.crossEntropy }));
}

/** Mean cross-entropy of the run's final checkpoint over the batches of steps [steps, steps + evalSteps). */
async function heldOutLoss(runDir: string, evalSteps: number): Promise<{ loss: number; config: TrainConfig; tokens: number }> {
  const folder = listCheckpoints(path.join(runDir, 'checkpoints'))[0];
  if (!folder) throw new Error(`${runDir} has no checkpoint; run moetrain train to the end first`);
  const state = readCheckpointState(folder);
  const cfg = mergeTrainConfig(defaultTrainConfig(), state.config as Record<string, unknown>, folder);
  if (cfg.model !== 'tiny') throw new Error(`${runDir}: recipe_curves evaluates the tiny model only`);
  const dataDir = cfg.data === 'demo' ? (await prepareDemoData({ runDir: cfg.run_dir, seed: cfg.seed })).dir : cfg.data;
  const data = TokenDataset.open({ dir: dataDir, seqLen: cfg.seq_len, seed: cfg.seed });
  if ((state.step + evalSteps) * cfg.global_batch_size > data.windows) {
    throw new Error(`${runDir}: ${state.step}+${evalSteps} steps of ${cfg.global_batch_size} sequences pass the first epoch of ${data.windows}; lower --eval`);
  }
  const backend = new CpuBackend(), model = tinyConfig();
  const training = new Training(cfg, model, backend);
  readEntries(folder, training.checkpointEntries());
  training.checkpointLoaded(state.optimizer_step);
  let sum = 0, n = 0, tokens = 0;
  for (let step = state.step; step < state.step + evalSteps; step++) {
    for (let micro = 0; micro < cfg.global_batch_size / cfg.micro_batch_size; micro++) {
      const b = data.batch({ step, globalBatch: cfg.global_batch_size, microBatch: cfg.micro_batch_size, microIndex: micro });
      const labelCount = b.labels.reduce((a, l) => a + (l >= 0 ? 1 : 0), 0);
      sum += noGrad(() => tidy(() => {
        const ids = fromHost(backend, b.inputs, [cfg.micro_batch_size, cfg.seq_len], 'i32');
        const labels = fromHost(backend, b.labels, [cfg.micro_batch_size, cfg.seq_len], 'i32');
        return toHostF32(training.model.forward(ids, labels, labelCount, { form: cfg.load_balance.form, alpha: 0 }).crossEntropy)[0]!;
      }));
      n++;
      tokens += labelCount;
    }
  }
  training.dispose();
  data.close();
  return { loss: sum / n, config: cfg, tokens };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Two panels: both loss curves; the relative gap per step and over a 20-step moving window. */
function curvesSvg(title: string, d: Curve[], l: Curve[]): string {
  const W = 960, H = 360, PW = W / 2, pad = { left: 70, right: 20, top: 40, bottom: 40 };
  const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`];
  const gap = d.map((r, i) => ({ step: r.step, v: 100 * (l[i]!.loss / r.loss - 1) }));
  const smooth = gap.map((g, i) => ({ step: g.step, v: i < 19 ? NaN : 100 * (mean(l.slice(i - 19, i + 1).map((r) => r.loss)) / mean(d.slice(i - 19, i + 1).map((r) => r.loss)) - 1) }));
  const panel = (x0: number, name: string, series: { pts: { step: number; v: number }[]; color: string; label: string; width: number }[]) => {
    const all = series.flatMap((s) => s.pts.filter((p) => Number.isFinite(p.v)));
    const xs = niceTicks(0, Math.max(...all.map((p) => p.step)));
    const ys = niceTicks(Math.min(...all.map((p) => p.v)), Math.max(...all.map((p) => p.v)));
    const [xlo, xhi] = [xs.ticks[0]!, xs.ticks[xs.ticks.length - 1]!], [ylo, yhi] = [ys.ticks[0]!, ys.ticks[ys.ticks.length - 1]!];
    const px = (s: number) => x0 + pad.left + (s - xlo) / (xhi - xlo) * (PW - pad.left - pad.right);
    const py = (v: number) => H - pad.bottom - (v - ylo) / (yhi - ylo) * (H - pad.top - pad.bottom);
    out.push(`<text x="${x0 + pad.left}" y="22" font-size="14">${name}</text>`);
    out.push(`<rect class="plot-area" x="${px(xlo)}" y="${py(yhi)}" width="${px(xhi) - px(xlo)}" height="${py(ylo) - py(yhi)}" fill="none" stroke="#444"/>`);
    const maxAbs = Math.max(Math.abs(ylo), Math.abs(yhi));
    for (const t of ys.ticks) out.push(`<line x1="${px(xlo)}" x2="${px(xhi)}" y1="${py(t)}" y2="${py(t)}" stroke="#ddd"/><text x="${px(xlo) - 6}" y="${py(t) + 4}" text-anchor="end">${tickLabel(t, ys.step, maxAbs)}</text>`);
    for (const t of xs.ticks) out.push(`<text x="${px(t)}" y="${H - pad.bottom + 16}" text-anchor="middle">${t}</text>`);
    out.push(`<text x="${px((xlo + xhi) / 2)}" y="${H - 8}" text-anchor="middle">step</text>`);
    series.forEach((s, k) => {
      const pts = s.pts.filter((p) => Number.isFinite(p.v)).map((p) => `${px(p.step).toFixed(1)},${py(p.v).toFixed(1)}`).join(' ');
      out.push(`<polyline class="curve" data-series="${s.label}" points="${pts}" fill="none" stroke="${s.color}" stroke-width="${s.width}"/>`);
      out.push(`<text x="${px(xhi) - 8}" y="${py(yhi) + 16 + 14 * k}" text-anchor="end" fill="${s.color}">${s.label}</text>`);
    });
  };
  panel(0, `${title}: training cross-entropy`, [
    { pts: d.map((r) => ({ step: r.step, v: r.loss })), color: '#1f77b4', label: 'default (f32 master)', width: 1.5 },
    { pts: l.map((r) => ({ step: r.step, v: r.loss })), color: '#d62728', label: 'lean (bf16, stochastic rounding)', width: 1 },
  ]);
  panel(PW, `${title}: lean / default − 1 (%)`, [
    { pts: gap, color: '#aaa', label: 'per step', width: 1 },
    { pts: smooth, color: '#000', label: 'over the last 20 steps', width: 1.5 },
  ]);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export async function main(argv: string[]): Promise<void> {
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i += 2) flags[argv[i]!.replace(/^--/, '')] = argv[i + 1]!;
  const dDir = flags['default'], lDir = flags['lean'], label = flags['label'] ?? 'run';
  if (!dDir || !lDir) throw new Error('usage: recipe_curves.js --default RUN_DIR --lean RUN_DIR --label NAME [--eval 32] [--out FILE.svg]');
  const evalSteps = Number(flags['eval'] ?? 32);
  const d = readCurve(dDir), l = readCurve(lDir);
  if (d.length !== l.length) throw new Error(`the runs have ${d.length} and ${l.length} steps; compare runs of the same length`);
  const [ed, el] = [await heldOutLoss(dDir, evalSteps), await heldOutLoss(lDir, evalSteps)];
  if (ed.config.recipe !== 'default' || el.config.recipe !== 'lean') throw new Error(`--default and --lean must be runs of those recipes (got ${ed.config.recipe}, ${el.config.recipe})`);
  const last = d.length - 1;
  const rel = (a: number, b: number) => Number((100 * (b / a - 1)).toFixed(3));
  const result = {
    label, steps: d.length, evalBatches: evalSteps, evalTokens: ed.tokens,
    heldOut: { default: Number(ed.loss.toFixed(4)), lean: Number(el.loss.toFixed(4)), gapPercent: rel(ed.loss, el.loss) },
    finalStep: { default: d[last]!.loss, lean: l[last]!.loss, gapPercent: rel(d[last]!.loss, l[last]!.loss) },
    last20: { default: Number(mean(d.slice(-20).map((r) => r.loss)).toFixed(4)), lean: Number(mean(l.slice(-20).map((r) => r.loss)).toFixed(4)),
      gapPercent: rel(mean(d.slice(-20).map((r) => r.loss)), mean(l.slice(-20).map((r) => r.loss))) },
  };
  console.log(JSON.stringify(result));
  if (flags['out']) fs.writeFileSync(flags['out'], curvesSvg(label, d, l));
}

await main(process.argv.slice(2));
