// A training run's curves as one hand-written SVG: four panels in a 2×2 grid (cross-entropy
// loss, learning rate, gradient norm, tokens/s), each against the step, with a frame, grid
// lines, "nice" ticks (1, 2 or 5 × 10^k) and tick labels. Every element a reader (or a test)
// needs is tagged: the plot area `rect.plot-area`, tick marks `line.x-tick` / `line.y-tick` with
// their value in data-value, and the curve `polyline.curve`, all with data-series. Runs longer
// than MAX_POINTS steps are drawn from the minimum and maximum of each bucket of steps, so
// spikes stay visible and the file stays small.
//
// Usage:
//   fs.writeFileSync('loss.svg', metricsPlotSvg(rows, { title: 'runs/default' }));
import { withThousands } from '../train/log_line.js';

/** The fields of a metrics.jsonl record that the plot draws. */
export interface MetricsRow {
  step: number;
  crossEntropy: number;
  learningRate: number;
  gradientNorm: number;
  tokensPerSecond: number;
}

export interface PlotOptions {
  /** Shown at the top (the run folder's name). */
  title: string;
}

/** Curves with more steps than this are drawn from per-bucket minima and maxima. */
export const MAX_POINTS = 2000;

const WIDTH = 960, HEIGHT = 640;
const PANEL_W = WIDTH / 2, PANEL_H = (HEIGHT - 30) / 2;
/** Plot area inside a panel: room for y labels on the left, the title above, x labels below. */
const PAD = { left: 72, right: 20, top: 34, bottom: 42 };

interface Series {
  key: string;
  title: (values: number[]) => string;
  value: (r: MetricsRow) => number;
  color: string;
}

const SERIES: Series[] = [
  { key: 'loss', value: (r) => r.crossEntropy, color: '#1f77b4', title: (v) => `cross-entropy loss (last ${v[v.length - 1]!.toFixed(4)}, best ${Math.min(...v).toFixed(4)})` },
  { key: 'learning-rate', value: (r) => r.learningRate, color: '#2ca02c', title: (v) => `learning rate (last ${v[v.length - 1]!.toExponential(2)})` },
  { key: 'gradient-norm', value: (r) => r.gradientNorm, color: '#d62728', title: (v) => `gradient norm (last ${v[v.length - 1]!.toFixed(4)})` },
  { key: 'tokens-per-second', value: (r) => r.tokensPerSecond, color: '#9467bd', title: (v) => `tokens/s (median ${withThousands(median(v))})` },
];

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Ticks at multiples of 1, 2 or 5 × 10^k covering [lo, hi] with about `count` intervals. */
export function niceTicks(lo: number, hi: number, count = 5): { ticks: number[]; step: number } {
  if (!(hi > lo)) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad; hi += pad;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  const ticks: number[] = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return { ticks, step };
}

/** A tick label with just the digits the tick step needs: 0.25, 4e-3, 12k. */
export function tickLabel(v: number, step: number, maxAbs: number): string {
  if (v === 0) return '0';
  if (maxAbs < 1e-2) {
    const e = Math.floor(Math.log10(maxAbs));
    const digits = Math.max(0, e - Math.floor(Math.log10(step) + 1e-9));
    return `${(v / 10 ** e).toFixed(digits)}e${e}`;
  }
  if (maxAbs >= 1e4 && step >= 100) {
    return `${(v / 1000).toFixed(Math.max(0, 3 - Math.floor(Math.log10(step) + 1e-9)))}k`;
  }
  return v.toFixed(Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
}

/** At most about MAX_POINTS points: whole, or the min and max of each bucket, in step order. */
function thin(xs: number[], ys: number[]): [number, number][] {
  const n = xs.length;
  if (n <= MAX_POINTS) return xs.map((x, i) => [x, ys[i]!]);
  const bucket = Math.ceil(n / (MAX_POINTS / 2));
  const out: [number, number][] = [];
  for (let b = 0; b < n; b += bucket) {
    let lo = b, hi = b;
    for (let i = b; i < Math.min(n, b + bucket); i++) {
      if (ys[i]! < ys[lo]!) lo = i;
      if (ys[i]! > ys[hi]!) hi = i;
    }
    for (const i of lo <= hi ? [lo, hi] : [hi, lo]) if (out.length === 0 || out[out.length - 1]![0] !== xs[i]) out.push([xs[i]!, ys[i]!]);
  }
  return out;
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const px = (v: number): string => v.toFixed(1);

function panel(series: Series, rows: readonly MetricsRow[], ox: number, oy: number): string[] {
  const pts = rows.filter((r) => Number.isFinite(series.value(r)));
  const xs = pts.map((r) => r.step), ys = pts.map(series.value);
  const left = ox + PAD.left, top = oy + PAD.top;
  const w = PANEL_W - PAD.left - PAD.right, h = PANEL_H - PAD.top - PAD.bottom;
  const s = `data-series="${series.key}"`;
  const out: string[] = [
    `<text class="panel-title" ${s} x="${px(left)}" y="${px(oy + 20)}" font-size="13" font-weight="bold">${esc(ys.length > 0 ? series.title(ys) : `${series.key} (no finite values)`)}</text>`,
    `<rect class="plot-area" ${s} x="${px(left)}" y="${px(top)}" width="${px(w)}" height="${px(h)}" fill="#fafafa"/>`,
  ];
  const frame = `<rect class="frame" x="${px(left)}" y="${px(top)}" width="${px(w)}" height="${px(h)}" fill="none" stroke="#444" stroke-width="1"/>`;
  if (ys.length === 0) return [...out, frame];
  const xt = niceTicks(Math.min(...xs), Math.max(...xs), 6);
  const yt = niceTicks(Math.min(...ys), Math.max(...ys), 5);
  const x0 = xt.ticks[0]!, x1 = xt.ticks[xt.ticks.length - 1]!;
  const y0 = yt.ticks[0]!, y1 = yt.ticks[yt.ticks.length - 1]!;
  const X = (v: number): number => left + ((v - x0) / (x1 - x0)) * w;
  const Y = (v: number): number => top + h - ((v - y0) / (y1 - y0)) * h;
  const maxAbsY = Math.max(Math.abs(y0), Math.abs(y1));
  for (const t of xt.ticks) {
    const x = X(t);
    out.push(`<line class="grid" x1="${px(x)}" y1="${px(top)}" x2="${px(x)}" y2="${px(top + h)}" stroke="#e4e4e4" stroke-width="1"/>`);
    out.push(`<line class="x-tick" ${s} data-value="${t}" x1="${px(x)}" y1="${px(top + h)}" x2="${px(x)}" y2="${px(top + h + 5)}" stroke="#444"/>`);
    out.push(`<text class="x-label" ${s} x="${px(x)}" y="${px(top + h + 18)}" text-anchor="middle">${esc(tickLabel(t, xt.step, Math.max(Math.abs(x0), Math.abs(x1))))}</text>`);
  }
  for (const t of yt.ticks) {
    const y = Y(t);
    out.push(`<line class="grid" x1="${px(left)}" y1="${px(y)}" x2="${px(left + w)}" y2="${px(y)}" stroke="#e4e4e4" stroke-width="1"/>`);
    out.push(`<line class="y-tick" ${s} data-value="${t}" x1="${px(left - 5)}" y1="${px(y)}" x2="${px(left)}" y2="${px(y)}" stroke="#444"/>`);
    out.push(`<text class="y-label" ${s} x="${px(left - 8)}" y="${px(y + 4)}" text-anchor="end">${esc(tickLabel(t, yt.step, maxAbsY))}</text>`);
  }
  out.push(frame);
  out.push(`<text class="x-title" x="${px(left + w / 2)}" y="${px(top + h + 34)}" text-anchor="middle" fill="#444">step</text>`);
  const points = thin(xs, ys).map(([x, y]) => `${X(x).toFixed(2)},${Y(y).toFixed(2)}`);
  out.push(`<polyline class="curve" ${s} fill="none" stroke="${series.color}" stroke-width="1.5" stroke-linejoin="round" points="${points.join(' ')}"/>`);
  if (points.length === 1) {
    const [cx, cy] = points[0]!.split(',');
    out.push(`<circle class="marker" ${s} cx="${cx}" cy="${cy}" r="3" fill="${series.color}"/>`);
  }
  return out;
}

export function metricsPlotSvg(rows: readonly MetricsRow[], options: PlotOptions): string {
  if (rows.length === 0) throw new Error('internal: a plot of no steps');
  const lines = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text class="title" x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15">${esc(`${options.title}: steps ${rows[0]!.step}-${rows[rows.length - 1]!.step}`)}</text>`,
  ];
  SERIES.forEach((series, i) => lines.push(...panel(series, rows, (i % 2) * PANEL_W, 30 + Math.floor(i / 2) * PANEL_H)));
  lines.push('</svg>');
  return lines.join('\n') + '\n';
}
