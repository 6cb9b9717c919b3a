// `moetrain plot RUN_DIR [--out FILE]`: the run's metrics.jsonl drawn as an SVG (plot_svg.ts) of
// loss, learning rate, gradient norm and tokens/s against the step. No network, no browser.
import fs from 'node:fs';
import path from 'node:path';
import type { CommandSpec } from './args.js';
import { metricsPlotSvg, type MetricsRow } from './plot_svg.js';

export const PLOT_COMMAND: CommandSpec = {
  name: 'plot',
  summary: 'Draw a run\'s cross-entropy loss, learning rate, gradient norm and tokens/s against the step, from RUN_DIR/metrics.jsonl, as an SVG file (open it in any browser or image viewer).',
  positionals: [{ name: 'RUN_DIR', help: 'a training run folder (the --run_dir of moetrain train)', required: true }],
  options: [{ name: 'out', value: 'FILE', default: 'RUN_DIR/loss.svg', help: 'the SVG file to write' }],
};

/** The records of metrics.jsonl (the last record of a step wins), in step order. */
export function readMetrics(file: string): MetricsRow[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? e}); pass the --run_dir of a moetrain train run`);
  }
  const bySteps = new Map<number, MetricsRow>();
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let r: Partial<MetricsRow>;
    try {
      r = JSON.parse(line) as Partial<MetricsRow>;
    } catch {
      throw new Error(`${file}:${i + 1}: not valid JSON; the file is damaged (delete the line to plot the rest)`);
    }
    const fields = ['step', 'crossEntropy', 'learningRate', 'gradientNorm', 'tokensPerSecond'] as const;
    for (const f of fields) if (typeof r[f] !== 'number') throw new Error(`${file}:${i + 1}: no number "${f}"; not a moetrain metrics file`);
    bySteps.set(r.step!, { step: r.step!, crossEntropy: r.crossEntropy!, learningRate: r.learningRate!, gradientNorm: r.gradientNorm!, tokensPerSecond: r.tokensPerSecond! });
  });
  return [...bySteps.values()].sort((a, b) => a.step - b.step);
}

export async function plotCommand(runDir: string, flags: Record<string, string>): Promise<void> {
  if (!fs.existsSync(runDir)) throw new Error(`run folder ${runDir} does not exist; pass the --run_dir of a moetrain train run`);
  const file = path.join(runDir, 'metrics.jsonl');
  const rows = readMetrics(file);
  if (rows.length === 0) throw new Error(`${file} holds no steps yet; plot a run that has trained at least one step`);
  const out = flags['out'] ?? path.join(runDir, 'loss.svg');
  fs.writeFileSync(out, metricsPlotSvg(rows, { title: path.basename(path.resolve(runDir)) }));
  console.log(`moetrain: wrote ${out} (steps ${rows[0]!.step}-${rows[rows.length - 1]!.step}, ${rows.length} points per curve)`);
}
