// `moetrain plot`: the SVG is parsed back and each of the four curves is checked against the
// metrics it was drawn from: its point count, every point mapped back through the axis ticks
// to its step and value, the points inside the plot area and the ticks covering the data; long
// runs keep their spikes; the command reads metrics.jsonl (the last record of a step wins).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { metricsPlotSvg, niceTicks, tickLabel, MAX_POINTS, type MetricsRow } from '../src/cli/plot_svg.js';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');

const SERIES: [string, keyof MetricsRow][] = [
  ['loss', 'crossEntropy'], ['learning-rate', 'learningRate'], ['gradient-norm', 'gradientNorm'], ['tokens-per-second', 'tokensPerSecond'],
];

function rows(n: number, first = 1): MetricsRow[] {
  return Array.from({ length: n }, (_, i) => {
    const step = first + i;
    return {
      step,
      crossEntropy: 5.6 * Math.exp(-step / 40) + 1.3 + 0.05 * Math.sin(step * 1.7),
      learningRate: step <= 10 ? 4e-3 * step / 10 : 4e-4 + 3.6e-3 * 0.5 * (1 + Math.cos(Math.PI * (step - 10) / Math.max(1, n - 10))),
      gradientNorm: 1 + 0.8 * Math.abs(Math.sin(step / 3)),
      tokensPerSecond: 1500 + 700 * Math.abs(Math.cos(step / 5)),
    };
  });
}

const attr = (tag: string, name: string): string => {
  const m = new RegExp(`\\s${name}="([^"]*)"`).exec(tag);
  assert.ok(m, `${name} in ${tag}`);
  return m[1]!;
};

interface Panel { area: { x: number; y: number; w: number; h: number }; xTicks: [number, number][]; yTicks: [number, number][]; points: [number, number][] }

/** The tagged elements of one series' panel. */
function panelOf(svg: string, series: string): Panel {
  const tags = svg.match(new RegExp(`<[a-z]+ class="[a-z-]+" data-series="${series}"[^>]*>`, 'g')) ?? [];
  const area = tags.find((t) => t.startsWith('<rect class="plot-area"'))!;
  const curve = tags.filter((t) => t.startsWith('<polyline class="curve"'));
  assert.equal(curve.length, 1, `one curve for ${series}`);
  return {
    area: { x: Number(attr(area, 'x')), y: Number(attr(area, 'y')), w: Number(attr(area, 'width')), h: Number(attr(area, 'height')) },
    xTicks: tags.filter((t) => t.startsWith('<line class="x-tick"')).map((t) => [Number(attr(t, 'data-value')), Number(attr(t, 'x1'))]),
    yTicks: tags.filter((t) => t.startsWith('<line class="y-tick"')).map((t) => [Number(attr(t, 'data-value')), Number(attr(t, 'y1'))]),
    points: attr(curve[0]!, 'points').split(' ').map((p) => p.split(',').map(Number) as [number, number]),
  };
}

/** Pixel → value through the first and last tick (the axis is linear). */
function inverse(ticks: [number, number][]): (pixel: number) => number {
  const [v0, p0] = ticks[0]!, [v1, p1] = ticks[ticks.length - 1]!;
  return (p) => v0 + ((p - p0) / (p1 - p0)) * (v1 - v0);
}

/** Every opening tag is closed (or self-closing), in order. */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (m[1]) assert.equal(stack.pop(), m[2], `closing </${m[2]}>`);
    else if (!m[3]) stack.push(m[2]!);
  }
  assert.deepEqual(stack, []);
  assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
}

test('plot: four curves, each point the metric it was drawn from, inside the axes', () => {
  const data = rows(57);
  const svg = metricsPlotSvg(data, { title: 'run <a&b>' });
  assertWellFormed(svg);
  assert.match(svg, /run &lt;a&amp;b&gt;: steps 1-57/);
  for (const [series, field] of SERIES) {
    const p = panelOf(svg, series);
    assert.equal(p.points.length, data.length, `${series}: one point per step`);
    const values = data.map((r) => r[field]);
    const lo = Math.min(...values), hi = Math.max(...values);
    assert.ok(p.xTicks.length >= 3 && p.yTicks.length >= 3, `${series}: ticks`);
    assert.ok(p.xTicks[0]![0] <= 1 && p.xTicks[p.xTicks.length - 1]![0] >= 57, `${series}: x ticks cover the steps`);
    assert.ok(p.yTicks[0]![0] <= lo && p.yTicks[p.yTicks.length - 1]![0] >= hi, `${series}: y ticks cover [${lo}, ${hi}]`);
    const step = inverse(p.xTicks), value = inverse(p.yTicks);
    const yUnit = Math.abs((p.yTicks[1]![0] - p.yTicks[0]![0]) / (p.yTicks[1]![1] - p.yTicks[0]![1]));
    p.points.forEach(([x, y], i) => {
      assert.ok(x >= p.area.x - 0.01 && x <= p.area.x + p.area.w + 0.01 && y >= p.area.y - 0.01 && y <= p.area.y + p.area.h + 0.01, `${series} point ${i} inside the plot area`);
      assert.ok(Math.abs(step(x) - data[i]!.step) < 0.05, `${series} point ${i}: step ${step(x)} vs ${data[i]!.step}`);
      assert.ok(Math.abs(value(y) - values[i]!) <= 0.02 * yUnit, `${series} point ${i}: value ${value(y)} vs ${values[i]}`);
    });
    // Higher values are drawn higher up (smaller y).
    const iMax = values.indexOf(hi), iMin = values.indexOf(lo);
    assert.ok(p.points[iMax]![1] < p.points[iMin]![1]);
  }
});

test('plot: a long run is thinned to bucket minima and maxima, so a spike stays; one step is a marker', () => {
  const data = rows(10_000);
  data[6543]!.gradientNorm = 40;
  const p = panelOf(metricsPlotSvg(data, { title: 'long' }), 'gradient-norm');
  assert.ok(p.points.length <= MAX_POINTS + 2 && p.points.length > MAX_POINTS / 2, `${p.points.length} points`);
  const top = p.points.reduce((a, b) => (b[1] < a[1] ? b : a));
  assert.ok(Math.abs(inverse(p.yTicks)(top[1]) - 40) < 0.1);
  assert.ok(Math.abs(inverse(p.xTicks)(top[0]) - 6544) < 0.5);
  for (let i = 1; i < p.points.length; i++) assert.ok(p.points[i]![0] > p.points[i - 1]![0], 'points in step order');

  const single = metricsPlotSvg(rows(1, 7), { title: 'one' });
  assertWellFormed(single);
  assert.equal(panelOf(single, 'loss').points.length, 1);
  assert.equal(single.match(/<circle class="marker"/g)!.length, 4);
});

test('plot: ticks and labels', () => {
  assert.deepEqual(niceTicks(1, 57, 6).ticks, [0, 10, 20, 30, 40, 50, 60]);
  assert.deepEqual(niceTicks(0.0004, 0.004, 5), { ticks: [0, 0.001, 0.002, 0.003, 0.004], step: 0.001 });
  assert.deepEqual(niceTicks(3, 3, 5).ticks, [2.6, 2.8, 3, 3.2, 3.4]);
  assert.equal(tickLabel(0.003, 0.001, 0.004), '3e-3');
  assert.equal(tickLabel(0.0025, 0.0005, 0.004), '2.5e-3');
  assert.equal(tickLabel(12000, 2000, 14000), '12k');
  assert.equal(tickLabel(2.5, 0.5, 6), '2.5');
  assert.equal(tickLabel(1500, 500, 3000), '1500');
  assert.equal(tickLabel(0, 0.5, 6), '0');
});

test('plot: the command reads metrics.jsonl and writes the SVG', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-plot-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const data = rows(12);
  // A resumed run may hold a step twice; the later record is the one that counts.
  const records = [...data.slice(0, 6), { ...data[5]!, crossEntropy: 99 }, ...data.slice(6)].map((r, i) => ({ time: `t${i}`, totalSteps: 12, ...r }));
  records[6] = { ...records[6]!, crossEntropy: data[5]!.crossEntropy + 0.5 };
  fs.writeFileSync(path.join(dir, 'metrics.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const r = spawnSync(process.execPath, [cli, 'plot', dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /wrote \S*loss\.svg \(steps 1-12, 12 points per curve\)/);
  const p = panelOf(fs.readFileSync(path.join(dir, 'loss.svg'), 'utf8'), 'loss');
  assert.equal(p.points.length, 12);
  assert.ok(Math.abs(inverse(p.yTicks)(p.points[5]![1]) - (data[5]!.crossEntropy + 0.5)) < 0.01);
  const out = path.join(dir, 'other.svg');
  assert.equal(spawnSync(process.execPath, [cli, 'plot', '--out', out, dir], { encoding: 'utf8' }).status, 0);
  assert.ok(fs.readFileSync(out, 'utf8').includes('data-series="tokens-per-second"'));
  fs.appendFileSync(path.join(dir, 'metrics.jsonl'), '{"step": 13, "crossEntropy": \n');
  const bad = spawnSync(process.execPath, [cli, 'plot', dir], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /metrics\.jsonl:14: not valid JSON/);
});
