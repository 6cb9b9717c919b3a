#!/usr/bin/env python3
"""Randomised interleaving model of the barrier protocol of the persistent Hopper MLA forward
(src/backend/cuda/kernels/mla_attention_fwd_hopper.cu), one CTA walking several work items
(query tiles), and of the work counter the CTAs claim items from. No GPU; plain python3.

Agents follow the kernel's program order; a scheduler picks, at random, any agent whose next
action is enabled or any pending asynchronous event (a TMA copy landing, a wgmma group
completing), so copies land and GEMMs finish in arbitrary order and at arbitrary times.
Modelled:
  - the producer thread: per item k (the CTA's claims' outcome), per key tile (ring tile number
    kv, counted across items): wait K empty[kv % 2] (parity (kv/2 - 1) & 1, kv ≥ 2), expect_tx
    and 3 K copies on K full; at the item's first tile, wait q_empty (parity (k-1) & 1, k ≥ 1),
    store the item's index in the shared slot, expect_tx and 3 Q copies on q_full; wait V empty,
    expect_tx and 2 V copies on V full. After the last item: wait q_empty, store −1, arrive on
    q_full;
  - two consumer warpgroups (one agent each; an arrival of a warpgroup counts as its 128
    threads, so the 256-arrival barriers count 2): per item wait q_full (parity k & 1), read the
    slot (−1: leave); with ping-pong, per tile the S GEMM (reads Q and K) and the previous
    tile's P·V (reads V) in turns of named barriers 1 and 2, K empty after the S GEMM is waited,
    q_empty after the item's last S GEMM, V empty after P·V; the item's last P·V outside the
    turns, then V empty; consumer 1 opens consumer 0's first turn once and hands over after
    every tile, consumer 0 takes one more turn when it leaves; without ping-pong, S, wait, P·V,
    wait per tile;
  - mbarriers with phase bit, pending arrivals and transaction bytes (a phase completes when
    both reach zero; try_wait.parity is done when the current phase parity differs from the
    one waited on); named barriers of two warpgroups (no arrival left unmatched at the end).
Checks: no deadlock; each consumer reads the index of the item it is at (then −1); every wgmma
read (at issue and at completion) sees the tile it belongs to (Q of its item, K/V of its ring
tile); no copy lands in a buffer an in-flight wgmma reads; no copy in flight and no unmatched
named-barrier arrival when the CTA ends. Planted mutations must each fail at least one schedule.
The claims: G CTAs (item x first, then claims of G + counter − base until one fails) in random
interleavings over consecutive launches on one counter that is never reset, the host adding
n_items to base after each launch with G < n_items: every item exactly once per launch.

Usage: python3 bench/attention_fwd_protocol_model.py [--schedules 200] [--seed 1]
"""
import argparse
import random
import sys

from protocol_report import catches, clean

STAGES = 2
Q_BOXES, K_BOXES, V_BOXES = 3, 3, 2


class Violation(Exception):
    pass


class MBar:
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase ^= 1
            self.pending = self.count

    def arrive(self, expect_tx=0):
        self.tx += expect_tx
        self.pending -= 1
        if self.pending < 0:
            raise Violation("mbarrier over-arrival")
        self._maybe_complete()

    def complete_tx(self, n):
        self.tx -= n
        self._maybe_complete()

    def done(self, parity):
        return self.phase != parity


class NamedBar:
    """bar.arrive / bar.sync of 256 threads = the two consumer warpgroups."""

    def __init__(self):
        self.n, self.gen = 0, 0

    def arrive(self):
        self.n += 1
        if self.n == 2:
            self.n, self.gen = 0, self.gen + 1

    def sync(self):
        g = self.gen
        self.arrive()
        return lambda: self.gen > g


class Cta:
    def __init__(self, items, pingpong, mutation, rng):
        self.items, self.pp, self.mut, self.rng = items, pingpong, mutation, rng
        self.buf = {("Q",): [None] * Q_BOXES}
        for s in range(STAGES):
            self.buf[("K", s)] = [None] * K_BOXES
            self.buf[("V", s)] = [None] * V_BOXES
        self.reading = {}
        self.q_full = MBar(1)
        self.q_empty = MBar(1 if mutation == "q_empty_count_one" else 2)
        self.full_k = [MBar(1) for _ in range(STAGES)]
        self.full_v = [MBar(1) for _ in range(STAGES)]
        self.empty_k = [MBar(2) for _ in range(STAGES)]
        self.empty_v = [MBar(2) for _ in range(STAGES)]
        self.turn = [NamedBar(), NamedBar()]  # turn[w]: consumer w's turn (named barrier 1 + w)
        self.slot = None  # the shared item index
        self.events = []
        self.in_flight = 0
        self.done_g = {}

    def copy(self, loc, box, tag, bar):
        self.in_flight += 1

        def land():
            if self.reading.get(loc, 0):
                raise Violation(f"copy lands in {loc} while a wgmma reads it")
            self.buf[loc][box] = tag
            self.in_flight -= 1
            bar.complete_tx(1)
        self.events.append(land)

    def wgmma(self, reads):
        """reads: [(loc, tag)]; checked at issue and at completion. Returns the group's id."""
        def check():
            for loc, tag in reads:
                if self.buf[loc] != [tag] * len(self.buf[loc]):
                    raise Violation(f"wgmma reads {loc} = {self.buf[loc]}, expected {tag}")
        check()
        for loc, _ in reads:
            self.reading[loc] = self.reading.get(loc, 0) + 1
        gid = len(self.done_g)
        self.done_g[gid] = False

        def complete():
            check()
            for loc, _ in reads:
                self.reading[loc] -= 1
            self.done_g[gid] = True
        self.events.append(complete)
        return gid

    def producer(self):
        kv = 0
        for k, n in enumerate(self.items):
            for i in range(n):
                s, par = kv % STAGES, ((kv // STAGES) - 1) & 1
                if kv >= STAGES:
                    yield lambda s=s, par=par: self.empty_k[s].done(par)
                self.full_k[s].arrive(K_BOXES)
                for b in range(K_BOXES):
                    self.copy(("K", s), b, kv, self.full_k[s])
                yield lambda: True
                if i == 0:
                    if self.mut == "slot_before_q_empty":
                        self.slot = k
                        yield lambda: True
                    if k > 0 and self.mut != "q_no_empty_wait":
                        par_q = (k & 1) if self.mut == "q_empty_parity" else (k - 1) & 1
                        yield lambda p=par_q: self.q_empty.done(p)
                    self.slot = k
                    self.q_full.arrive(Q_BOXES)
                    for b in range(Q_BOXES):
                        self.copy(("Q",), b, k, self.q_full)
                    yield lambda: True
                if kv >= STAGES:
                    yield lambda s=s, par=par: self.empty_v[s].done(par)
                self.full_v[s].arrive(V_BOXES)
                for b in range(V_BOXES):
                    self.copy(("V", s), b, kv, self.full_v[s])
                yield lambda: True
                kv += 1
        k = len(self.items)
        if self.mut != "end_without_q_empty":
            yield lambda: self.q_empty.done((k - 1) & 1)
        self.slot = -1
        self.q_full.arrive()

    def consumer(self, me):
        other = 1 - me
        if self.pp and me == 1:
            self.turn[other].arrive()
        kv = 0
        for k in range(len(self.items) + 1):
            if self.mut == "ring_reset":
                kv = 0
            par_q = (k & 1) ^ (1 if self.mut == "q_full_parity" else 0)
            yield lambda p=par_q: self.q_full.done(p)
            want = k if k < len(self.items) else -1
            if self.slot != want:
                raise Violation(f"consumer {me} reads item {self.slot} from the slot, expected {want}")
            if self.slot < 0:
                break
            n = self.items[k]

            def hand_over(i):
                return not (self.mut == "turns_skip_last" and me == 1 and i == n - 1)

            def q_read_done(i):  # the item's last S GEMM: Q may be refilled
                if i == n - 1:
                    self.q_empty.arrive()

            if self.pp:
                c, s0 = kv, kv % STAGES
                yield lambda c=c, s0=s0: self.full_k[s0].done((c // STAGES) & 1)
                yield self.turn[me].sync()
                g = self.wgmma([(("Q",), k), (("K", s0), c)])
                if hand_over(0):
                    self.turn[other].arrive()
                if self.mut == "q_empty_early":
                    q_read_done(0)
                yield lambda g=g: self.done_g[g]
                self.empty_k[s0].arrive()
                if self.mut != "q_empty_early":
                    q_read_done(0)
                for i in range(1, n):
                    c = kv + i
                    s, prev = c % STAGES, (c - 1) % STAGES
                    yield lambda c=c, s=s: self.full_k[s].done((c // STAGES) & 1)
                    yield lambda c=c, prev=prev: self.full_v[prev].done(((c - 1) // STAGES) & 1)
                    yield self.turn[me].sync()
                    gs = self.wgmma([(("Q",), k), (("K", s), c)])
                    gp = self.wgmma([(("V", prev), c - 1)])
                    if hand_over(i):
                        self.turn[other].arrive()
                    if self.mut == "q_empty_early":
                        q_read_done(i)
                    yield lambda gs=gs: self.done_g[gs]  # wgmma_wait<1>
                    self.empty_k[s].arrive()
                    if self.mut != "q_empty_early":
                        q_read_done(i)
                    yield lambda gp=gp, gs=gs: self.done_g[gp] and self.done_g[gs]  # wgmma_wait<0>
                    self.empty_v[prev].arrive()
                c = kv + n - 1
                s = c % STAGES
                yield lambda c=c, s=s: self.full_v[s].done((c // STAGES) & 1)
                g = self.wgmma([(("V", s), c)])
                yield lambda g=g: self.done_g[g]
                if self.mut != "no_last_v_release":
                    self.empty_v[s].arrive()
            else:
                for i in range(n):
                    c = kv + i
                    s = c % STAGES
                    yield lambda c=c, s=s: self.full_k[s].done((c // STAGES) & 1)
                    g = self.wgmma([(("Q",), k), (("K", s), c)])
                    if self.mut == "q_empty_early":
                        q_read_done(i)
                    yield lambda g=g: self.done_g[g]
                    self.empty_k[s].arrive()
                    if self.mut != "q_empty_early":
                        q_read_done(i)
                    yield lambda c=c, s=s: self.full_v[s].done((c // STAGES) & 1)
                    g = self.wgmma([(("V", s), c)])
                    yield lambda g=g: self.done_g[g]
                    if not (self.mut == "no_last_v_release" and i == n - 1):
                        self.empty_v[s].arrive()
            kv += n
        if self.pp and me == 0 and self.mut != "turns_no_exit_turn":
            yield self.turn[me].sync()

    def run(self, max_actions=200000):
        agents = [self.producer(), self.consumer(0), self.consumer(1)]
        waits = [None] * len(agents)
        live = list(range(len(agents)))

        def advance(a):
            try:
                waits[a] = next(agents[a])
            except StopIteration:
                live.remove(a)
        for a in list(live):
            advance(a)
        for _ in range(max_actions):
            if not live:
                if self.in_flight:
                    raise Violation(f"CTA ends with {self.in_flight} copies in flight")
                if any(b.n for b in self.turn):
                    raise Violation("CTA ends with an unmatched named-barrier arrival")
                return
            ready = [a for a in live if waits[a]()]
            choices = [("agent", a) for a in ready] + [("event", e) for e in range(len(self.events))]
            if not choices:
                raise Violation(f"deadlock: agents {live} blocked, no event pending")
            kind, x = self.rng.choice(choices)
            if kind == "agent":
                advance(x)
            else:
                self.events.pop(x)()
        raise Violation("no progress bound reached")


def check_claims(rng, launches=40):
    """Consecutive launches of random shapes on one counter (u32, never reset), the CTAs'
    claims interleaved at random; returns an error or None."""
    counter = rng.randrange(2**32)  # the host zeroes it once; any start (and the wrap at 2^32) must work
    base = counter
    for _ in range(launches):
        n_items = rng.randint(1, 60)
        G = rng.randint(1, n_items)
        got = list(range(G))  # item x is CTA x's first
        active = list(range(G)) if G < n_items else []
        while active:
            x = rng.choice(active)
            c = (counter - base) % 2**32
            counter = (counter + 1) % 2**32
            if G + c < n_items:
                got.append(G + c)
            else:
                active.remove(x)
        if sorted(got) != list(range(n_items)):
            return f"n_items {n_items}, G {G}: items {sorted(got)}"
        if G < n_items:
            base = (base + n_items) % 2**32
        if base != counter:
            return f"n_items {n_items}, G {G}: the host's base {base} != counter {counter}"
    return None


MUTATIONS = ["q_no_empty_wait", "q_empty_parity", "q_full_parity", "q_empty_early", "q_empty_count_one",
             "slot_before_q_empty", "end_without_q_empty", "no_last_v_release", "ring_reset", "turns_skip_last",
             "turns_no_exit_turn"]


def trial(items, pp, mutation, seed):
    try:
        Cta(items, pp, mutation, random.Random(seed)).run()
        return None
    except Violation as e:
        return str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    err = next((e for e in (check_claims(rng) for _ in range(50)) if e), None)
    print(f"claims: 50 × 40 launches on one counter, every item exactly once: {'OK' if not err else 'FAILED ' + err}")
    ok = err is None
    # Item sequences of a CTA: key tiles per item 1..4 (1 = an item of a single tile), 1..5 items.
    seqs = [[1], [2], [1, 1], [3, 1], [1, 3], [2, 2, 2], [4, 3, 2, 1], [1, 1, 1, 1, 1]]
    seqs += [[rng.randint(1, 4) for _ in range(rng.randint(1, 5))] for _ in range(12)]
    configs = [(s, pp) for s in seqs for pp in (True, False)]
    ok = clean(f"protocol as in the kernel ({len(seqs)} item sequences × ping-pong on/off × {args.schedules})",
               ((trial(items, pp, None, args.seed * 1_000_003 + k * 7919 + ci * 31), (items, pp, k))
                for ci, (items, pp) in enumerate(configs) for k in range(args.schedules))) and ok
    def runs(mut):
        for ci, (items, pp) in enumerate(configs):
            if mut.startswith("turns_") and not pp:
                continue
            for k in range(max(1, args.schedules // 4)):
                yield trial(items, pp, mut, args.seed * 999_983 + k * 104_729 + ci * 17), f"items={items} pp={pp}"
    for mut in MUTATIONS:
        ok = catches("mutation ", mut, runs(mut)) and ok
    print("model check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
