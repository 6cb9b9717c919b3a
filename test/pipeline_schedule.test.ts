// Pipeline schedules (src/parallel/schedule.ts) run by the simulator (schedule_sim.ts): every
// pass runs once on the rank that holds its stage, every forward precedes its backward and
// every dependency across ranks is respected (checked here on the timeline, independently of
// the simulator's own checks), no schedule deadlocks with buffered or with rendezvous
// transfers, the bubble fractions equal the closed forms, and broken schedules are caught; the
// model parts each rank holds.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  bubbleFraction, bubbleLine, checkSchedule, computeOrder, minMicroBatches, pipelineSchedule, stageRanks, stagesOfRank,
} from '../src/parallel/schedule.js';
import {
  passesOf, simulate, uniformCosts, type Action, type CommSemantics, type PassCosts, type Schedule, type ScheduleKind, type Simulation, type Transfer,
} from '../src/parallel/schedule_sim.js';
import { pipelineParts } from '../src/parallel/pipeline.js';
import { parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';

const KINDS: readonly ScheduleKind[] = ['1f1b', 'dualpipev'];
const SEMANTICS: readonly CommSemantics[] = ['ideal', 'eager', 'rendezvous'];

/** The timeline's facts, checked without trusting the simulator's bookkeeping. */
function checkTimeline(s: Schedule, sim: Simulation, semantics: CommSemantics): void {
  const S = s.stageRank.length;
  const when = new Map<string, { rank: number; start: number; end: number }>();
  const eps = 1e-9;
  for (const t of sim.timeline) {
    const { forward, backward } = passesOf(t.action);
    for (const [p, dir] of [[forward, 'f'], [backward, 'b']] as const) {
      if (!p) continue;
      const k = `${dir}${p.mb}:${p.stage}`;
      assert.ok(!when.has(k), `${k} runs twice`);
      assert.equal(t.rank, s.stageRank[p.stage], `${k} runs on rank ${t.rank}`);
      when.set(k, t);
    }
  }
  for (let mb = 0; mb < s.micro; mb++) {
    for (let st = 0; st < S; st++) {
      const f = when.get(`f${mb}:${st}`), b = when.get(`b${mb}:${st}`);
      assert.ok(f && b, `micro-batch ${mb} stage ${st} misses a pass`);
      assert.ok(f.end <= b.start + eps, `backward(${mb}, ${st}) starts before its forward ends`);
      if (st > 0) assert.ok(when.get(`f${mb}:${st - 1}`)!.end <= f.start + eps, `forward(${mb}, ${st}) starts before its input is computed`);
      if (st < S - 1) assert.ok(when.get(`b${mb}:${st + 1}`)!.end <= b.start + eps, `backward(${mb}, ${st}) starts before its output's gradient is computed`);
    }
  }
  // A rank does one thing at a time.
  for (let r = 0; r < s.pp; r++) {
    const mine = sim.timeline.filter((t) => t.rank === r);
    for (let i = 1; i < mine.length; i++) assert.ok(mine[i - 1]!.end <= mine[i]!.start + eps, `rank ${r} overlaps actions ${i - 1} and ${i}`);
  }
  if (semantics === 'ideal') return;
  // Every transfer is sent by its producer's rank after the pass and received by the consumer's before it.
  const sent = new Map<string, number>(), received = new Map<string, number>();
  const id = (t: Transfer) => `${t.kind}${t.mb}:${t.stage}`;
  for (const t of sim.timeline) {
    const a = t.action;
    const sends = a.op === 'send' ? [a.transfer] : a.op === 'sendRecv' ? [a.send] : [];
    const recvs = a.op === 'recv' ? [a.transfer] : a.op === 'sendRecv' ? [a.recv] : [];
    for (const x of sends) {
      assert.equal(t.rank, s.stageRank[x.stage]);
      assert.ok(when.get(`${x.kind === 'activation' ? 'f' : 'b'}${x.mb}:${x.stage}`)!.end <= t.start + eps, `${id(x)} sent before it is produced`);
      sent.set(id(x), t.start);
    }
    for (const x of recvs) {
      const consumer = x.kind === 'activation' ? `f${x.mb}:${x.stage + 1}` : `b${x.mb}:${x.stage - 1}`;
      assert.equal(t.rank, when.get(consumer)!.rank);
      assert.ok(t.end <= when.get(consumer)!.start + eps, `${id(x)} received after its consumer starts`);
      received.set(id(x), t.end);
    }
  }
  assert.deepEqual([...sent.keys()].sort(), [...received.keys()].sort(), 'every send has its recv');
  for (const [k, t] of received) assert.ok(sent.get(k)! <= t + eps, `${k} received before it is sent`);
}

describe('pipeline schedules', () => {
  for (const kind of KINDS) {
    test(`${kind}: pp 1-4, from the fewest micro-batches up: valid under every semantics, transfers cost nothing at uniform costs`, () => {
      for (const pp of [1, 2, 3, 4]) {
        const least = minMicroBatches(kind, pp);
        for (const m of new Set([least, least + 1, pp + 1, 8, 16])) {
          if (m < least) continue;
          const s = pipelineSchedule(kind, pp, m);
          const costs = uniformCosts(s.stageRank.length);
          const sims = SEMANTICS.map((sem) => { const sim = simulate(s, costs, sem); checkTimeline(s, sim, sem); return sim; });
          // Every transfer found a moment free on both ranks: neither buffering nor rendezvous adds a wait.
          for (const sim of sims.slice(1)) assert.equal(sim.makespan, sims[0]!.makespan, `${kind} pp${pp} m${m}`);
        }
      }
    });
  }

  test('1F1B bubble = (pp − 1)/(m + pp − 1) for any F:B ratio, including fewer micro-batches than stages', () => {
    for (const [F, B] of [[1, 2], [1, 1], [3, 1]] as const) {
      for (const pp of [1, 2, 3, 4, 8]) {
        for (const m of [1, 2, pp, 8, 16]) {
          assert.ok(Math.abs(bubbleFraction('1f1b', pp, m, uniformCosts(pp, F, B)) - (pp - 1) / (m + pp - 1)) < 1e-12, `F ${F} B ${B} pp ${pp} m ${m}`);
        }
      }
    }
  });

  test('DualPipeV bubble = (p−1)(F+B+max(F,B)) / (2m(F+B) + (p−1)(F+B+max(F,B))) with per-chunk costs F, B', () => {
    // Against 1F1B over the same layers (a stage = two chunks: 2F, 2B) it saves (p−1)·min(F, B) per rank.
    for (const [F, B] of [[1, 2], [1, 1], [3, 1]] as const) {
      for (const pp of [1, 2, 3, 4, 8]) {
        for (const m of [2 * pp - 1, 2 * pp, 16, 17]) {
          const extra = (pp - 1) * (F + B + Math.max(F, B));
          const want = extra / (2 * m * (F + B) + extra);
          assert.ok(Math.abs(bubbleFraction('dualpipev', pp, m, uniformCosts(2 * pp, F, B)) - want) < 1e-12, `F ${F} B ${B} pp ${pp} m ${m}`);
        }
      }
    }
  });

  test('the bubble table for pp 2/4 × 8/16 micro-batches (F = 1, B = 2)', () => {
    const rows: string[] = [];
    for (const pp of [2, 4]) {
      for (const m of [8, 16]) {
        const a = bubbleFraction('1f1b', pp, m), d = bubbleFraction('dualpipev', pp, m);
        // The V shape turns without a transfer and overlaps F&B pairs: it idles less than 1F1B.
        assert.ok(d < a, `pp ${pp} m ${m}: dualpipev ${d} ≥ 1f1b ${a}`);
        rows.push(`pp ${pp}  m ${String(m).padStart(2)}  1f1b ${(100 * a).toFixed(2)}%  dualpipev ${(100 * d).toFixed(2)}%`);
      }
    }
    console.log(rows.join('\n'));
    assert.match(bubbleLine(4, 8), /pp 4, 8 micro-batches: 1f1b 27\.3%, dualpipev 23\.8%/);
    assert.match(bubbleLine(4, 4), /1f1b 42\.9%, dualpipev needs ≥ 7 micro-batches/);
  });

  test('random stage costs: buffered transfers run in the ideal time; rendezvous never deadlocks and stays within 10%', () => {
    let seed = 12345;
    const rnd = () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647; };
    let worst = 0;
    for (const kind of KINDS) {
      for (const pp of [2, 3, 4]) {
        for (const m of [2 * pp, 2 * pp + 3]) {
          const S = stageRanks(kind, pp).length;
          const costs: PassCosts = { forward: Array.from({ length: S }, () => 0.5 + rnd()), backward: Array.from({ length: S }, () => 1 + 2 * rnd()) };
          const s = pipelineSchedule(kind, pp, m, costs);
          const [ideal, eager, rv] = SEMANTICS.map((sem) => { const sim = simulate(s, costs, sem); checkTimeline(s, sim, sem); return sim.makespan; });
          assert.ok(Math.abs(eager! - ideal!) < 1e-9, `${kind} pp${pp} m${m}: eager ${eager} vs ideal ${ideal}`);
          worst = Math.max(worst, rv! / ideal! - 1);
        }
      }
    }
    assert.ok(worst < 0.1, `rendezvous ${(100 * worst).toFixed(1)}% over the ideal`);
  });

  test('the V shape: rank r holds stages r and 2·pp−1−r, rank 0 both ends; the steady state runs F&B pairs of different micro-batches', () => {
    assert.deepEqual(stageRanks('dualpipev', 3), [0, 1, 2, 2, 1, 0]);
    assert.deepEqual(stagesOfRank('dualpipev', 3, 0), [0, 5]);
    assert.deepEqual(stagesOfRank('1f1b', 3, 2), [2]);
    const order = computeOrder('dualpipev', 2, 8);
    for (const list of order) {
      const pairs = list.filter((a): a is Extract<Action, { op: 'forwardBackward' }> => a.op === 'forwardBackward');
      assert.ok(pairs.length >= 8);
      for (const p of pairs) assert.notEqual(p.forward.mb, p.backward.mb);
    }
  });

  test('bad micro-batch counts: dualpipev below 2·pp − 1 is one line with the numbers and the fix; 1f1b below pp warns', () => {
    assert.throws(() => checkSchedule('dualpipev', 4, 6), /^Error: the dualpipev schedule needs micro-batches ≥ 2·pp − 1 = 2·4 − 1 = 7, got global_batch_size \/ micro_batch_size = 6; raise global_batch_size .* or use --parallel\.schedule 1f1b$/);
    assert.throws(() => pipelineSchedule('dualpipev', 2, 2), /needs micro-batches ≥ 2·pp − 1 = 2·2 − 1 = 3/);
    assert.equal(checkSchedule('dualpipev', 4, 7), null);
    assert.match(checkSchedule('1f1b', 4, 2)!, /^1f1b with 2 micro-batches < pp = 4: at most 2 of the 4 stages work at any time \(bubble 60%\); give at least 4 micro-batches per step$/);
    assert.equal(checkSchedule('1f1b', 4, 4), null);
    assert.throws(() => checkSchedule('1f1b', 0, 4), /--parallel\.pp must be a positive integer, got 0/);
  });
});

describe('the simulator catches broken schedules', () => {
  const tr = (kind: Transfer['kind'], mb: number, stage: number, from: number, to: number): Transfer => ({ kind, mb, stage, from, to });

  test('a pass before its input arrives, a pass run twice, a pass never run', () => {
    const s = pipelineSchedule('1f1b', 2, 2);
    const rank1 = [...s.actions[1]!];
    const firstRecv = rank1.findIndex((a) => a.op === 'recv' || a.op === 'sendRecv');
    const [recv] = rank1.splice(firstRecv, 1);
    rank1.splice(rank1.findIndex((a) => a.op === 'forward') + 1, 0, recv!);
    assert.throws(() => simulate({ ...s, actions: [s.actions[0]!, rank1] }, uniformCosts(2), 'eager'), /rank 1 at forward\(0, stage 1\): its input activation has not arrived/);
    const twice = [...s.actions[0]!, s.actions[0]![0]!];
    assert.throws(() => simulate({ ...s, actions: [twice, s.actions[1]!] }, uniformCosts(2), 'ideal'), /this pass ran before/);
    const never = s.actions[0]!.filter((a) => !(a.op === 'backward' && a.pass.mb === 1));
    assert.throws(() => simulate({ ...s, actions: [never, s.actions[1]!] }, uniformCosts(2), 'ideal'), /micro-batch 1 never runs backward through stage 0/);
  });

  test('two ranks that send to each other first deadlock with rendezvous transfers but not with buffered ones', () => {
    // Stage 0 on rank 0 and stage 1 on rank 1 with two micro-batches, written so that rank 1
    // sends a gradient while rank 0 sends an activation, each before receiving.
    const F = (mb: number, stage: number): Action => ({ op: 'forward', pass: { mb, stage } });
    const Bk = (mb: number, stage: number): Action => ({ op: 'backward', pass: { mb, stage } });
    const rank0: Action[] = [F(0, 0), { op: 'send', transfer: tr('activation', 0, 0, 0, 1) }, F(1, 0),
      { op: 'send', transfer: tr('activation', 1, 0, 0, 1) }, { op: 'recv', transfer: tr('gradient', 0, 1, 1, 0) }, Bk(0, 0),
      { op: 'recv', transfer: tr('gradient', 1, 1, 1, 0) }, Bk(1, 0)];
    const rank1: Action[] = [{ op: 'recv', transfer: tr('activation', 0, 0, 0, 1) }, F(0, 1), Bk(0, 1),
      { op: 'send', transfer: tr('gradient', 0, 1, 1, 0) }, { op: 'recv', transfer: tr('activation', 1, 0, 0, 1) }, F(1, 1), Bk(1, 1),
      { op: 'send', transfer: tr('gradient', 1, 1, 1, 0) }];
    const s: Schedule = { kind: '1f1b', pp: 2, micro: 2, stageRank: [0, 1], actions: [rank0, rank1] };
    checkTimeline(s, simulate(s, uniformCosts(2), 'eager'), 'eager');
    assert.throws(() => simulate(s, uniformCosts(2), 'rendezvous'), /deadlocks under rendezvous transfers: rank 0 waits at send activation of \(1, stage 0\) 0→1; rank 1 waits at send gradient of \(0, stage 1\) 1→0/);
  });
});

describe('model parts of a pipeline rank', () => {
  const c4 = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 4 }, 'parts');
  const all: readonly [number, number] = [0, c4.n_routed_experts];

  test('1F1B: one part per rank; DualPipeV: rank r holds stages r and 2·pp−1−r, rank 0 the embedding and the head; the layers are covered once', () => {
    for (const kind of KINDS) {
      const parts = [0, 1].flatMap((r) => pipelineParts(c4, kind, 2, r, 16, all));
      const layers = parts.flatMap(({ part }) => Array.from({ length: part.layers[1] - part.layers[0] }, (_, i) => part.layers[0] + i)).sort();
      assert.deepEqual(layers, [0, 1, 2, 3], kind);
      assert.equal(parts.filter((p) => p.part.embed).length, 1);
      assert.equal(parts.filter((p) => p.part.head).length, 1);
    }
    const v0 = pipelineParts(c4, 'dualpipev', 2, 0, 16, all);
    assert.deepEqual(v0.map((p) => [p.stage, p.part.embed, p.part.head]), [[0, true, false], [3, false, true]]);
    assert.deepEqual(pipelineParts(c4, '1f1b', 2, 1, 16, [4, 8]).map((p) => [p.stage, p.part.experts, p.part.head]), [[1, [4, 8], true]]);
  });

  test('DualPipeV needs 2·pp layers: one line with the numbers and the fix', () => {
    const c3 = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 3 }, 'parts');
    assert.throws(() => pipelineParts(c3, 'dualpipev', 2, 0, 16, all), /^Error: the dualpipev schedule splits the layers into 2·pp = 2·2 = 4 chunks, but the model has 3 layers; lower --parallel\.pp to at most 1 or use --parallel\.schedule 1f1b$/);
    assert.equal(pipelineParts(c3, '1f1b', 2, 0, 16, all).length, 1);
  });
});
