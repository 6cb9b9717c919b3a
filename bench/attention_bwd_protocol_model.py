#!/usr/bin/env python3
"""Randomised interleaving model of the barrier protocol of the Hopper MLA backward
(src/backend/cuda/kernels/mla_attention_bwd_hopper.cu). No GPU; plain python3.

Agents follow the kernel's program order step by step; a scheduler picks, at random, any agent
whose next action is enabled, or any pending asynchronous event (a TMA copy landing, a wgmma
group completing), so copies land and GEMMs finish in arbitrary order and at arbitrary times.
Modelled:
  - the producer warp's lanes (L of them, like its 32 lanes; lane 0 issues every copy): lane 0
    arrive.expect_tx on kv_full with the K/V bytes, then issues the K/V copies (5 TMA boxes);
    per step, every lane waits on empty[s] (parity ((i/2) - 1) & 1) before refilling stage s,
    lane 0 expect_tx(full[s], Q+dO bytes) and issues those copies, every lane stores its part of
    lse/D (plain stores) and arrives on full[s]
    and issues the 5 Q/dO copies, the other lanes plain-arrive on full[s] (count L);
  - a TMA copy lands later as one event: it writes its box and completes its bytes on the
    barrier it names (complete_tx);
  - two consumer warpgroups (one agent each; an mbarrier arrival of a warpgroup counts as its
    128 threads): wait kv_full, then per step wait full[s] (parity (i/2) & 1), Sᵀ GEMM (reads
    Q, K), lse, dPᵀ GEMM (reads dO, V), D, store dSᵀ into buffer i%2, dV/dK GEMM (reads Q, dO),
    wait, arrive empty[s]; step i's dQ belongs to consumer i%2 and uses dSᵀ buffer i%2: the
    other consumer bar.arrives "dSᵀ full" of it after its dV/dK GEMMs; the owner, during step
    i+1 (at step i itself for the last step), bar.syncs on it, runs three dQ GEMMs (64 columns
    each; each reads both halves of the buffer, and K), each waited before the next is issued
    (the staging of one GEMM's results overlaps the next GEMM; the staging is warp-local and
    not modelled), then bar.arrives "dSᵀ read" of the buffer if step i+2 exists; the
    non-owner of step i-2, before storing its half at step i ≥ 2, bar.syncs on "dSᵀ read" of
    that buffer;
  - mbarriers with phase bit, pending arrival count and transaction count (a phase completes
    when both reach zero; parity waits exactly as try_wait.parity: done when the current phase
    parity differs from the one waited on), and named barriers of two warpgroups (bar.arrive
    counts, bar.sync counts and waits for the generation to complete; no arrival may be left
    unmatched when the block ends).
Checks: no deadlock (nothing enabled while an agent is unfinished); every read (plain, or a
wgmma's at issue and again at completion) sees the data of the step it belongs to (no unlanded
or stale stage, lse/D or dSᵀ); no write (a copy landing, a plain store) into a location an
in-flight wgmma is reading; no copy still in flight when the block ends. Planted mutations must
each fail at least one schedule.

Usage: python3 bench/attention_bwd_protocol_model.py [--schedules 300] [--seed 1]
"""
import argparse
import random
import sys

from protocol_report import catches, clean

STAGES = 2
DS_BUFS = 2  # dSᵀ buffers: step i uses i % 2


class Violation(Exception):
    pass


Q_BOXES, KV_BOXES, BOX = 5, 5, 1  # copies per step (q_nope ×2, q_pe, dO ×2) and for K/V; bytes in units


class MBar:
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase ^= 1
            self.pending = self.count

    def arrive(self, expect_tx=0):  # mbarrier.arrive[.expect_tx]: the bytes are added first
        self.tx += expect_tx
        self.pending -= 1
        if self.pending < 0:
            raise Violation("mbarrier over-arrival")
        self._maybe_complete()

    def expect_tx(self, n):  # mbarrier.expect_tx: bytes added to the current phase, no arrival
        self.tx += n

    def complete_tx(self, n):  # a copy's bytes landing
        self.tx -= n
        self._maybe_complete()

    def done(self, parity):  # mbarrier.try_wait.parity
        return self.phase != parity


class NamedBar:
    """bar.arrive / bar.sync of 256 threads = two warpgroups."""

    def __init__(self):
        self.n, self.gen = 0, 0

    def arrive(self):
        self.n += 1
        if self.n == 2:
            self.n, self.gen = 0, self.gen + 1

    def sync(self):  # a generator step: arrive, then wait for the generation to complete
        g = self.gen
        self.arrive()
        return lambda: self.gen > g


class Model:
    def __init__(self, n_steps, with_dq, lanes, mutation, rng):
        self.n, self.with_dq, self.L, self.mut, self.rng = n_steps, with_dq, lanes, mutation, rng
        self.kv = [None] * KV_BOXES                        # K/V boxes: 'kv' once landed
        self.stage = [[None] * Q_BOXES for _ in range(STAGES)]   # Q/dO boxes: step tag
        self.lse = [[None] * lanes for _ in range(STAGES)]       # lse/D parts per lane: step tag
        self.ds = [[None, None] for _ in range(DS_BUFS)]          # dSᵀ buffer b, half w: step tag
        self.reading = {}                                   # location -> in-flight wgmma reads
        self.bar_kv = MBar(1)
        self.full = [MBar(1 if mutation == "full_count_one" else lanes) for _ in range(STAGES)]
        self.empty = [MBar(1 if mutation == "empty_count_one_wg" else 2) for _ in range(STAGES)]
        self.ds_full = [NamedBar() for _ in range(DS_BUFS)]
        self.ds_read = [NamedBar() for _ in range(DS_BUFS)]
        self.events = []                                    # pending async events: callables
        self.copies_in_flight = 0
        self.wgmma_done = {}                                # id -> bool

    # ---- locations ----
    def write(self, loc, apply):
        if self.reading.get(loc, 0):
            raise Violation(f"write into {loc} while a wgmma reads it")
        apply()

    def check(self, what, got, want):
        if got != want:
            raise Violation(f"{what}: read {got!r}, expected {want!r}")

    def tma(self, loc, apply, bar):
        """One bulk tensor copy: lands later, writing its box and completing BOX bytes on bar."""
        self.copies_in_flight += 1

        def land():
            self.write(loc, apply)
            self.copies_in_flight -= 1
            bar.complete_tx(BOX)
        self.events.append(land)

    # ---- producer lane p (lane 0 issues the copies) ----
    def producer(self, p):
        if p == 0:
            self.bar_kv.arrive(KV_BOXES * BOX)
            for k in range(KV_BOXES):
                self.tma(("kv",), lambda k=k: self.kv.__setitem__(k, "kv"), self.bar_kv)
        for i in range(self.n):
            s = i % STAGES
            if i >= STAGES and self.mut != "no_empty_wait" and not (self.mut == "empty_wait_lane0_only" and p):
                par = ((i // STAGES) - 1) & 1
                if self.mut == "producer_parity":
                    par = (i // STAGES) & 1
                yield lambda s=s, par=par: self.empty[s].done(par)
            if self.mut == "arrive_before_stores" and p:
                self.full[s].arrive()
                yield lambda: True  # the consumers may run between the arrival and the stores
            if p == 0:  # expect_tx and the copies first, so they fly while the lanes load lse/D
                expect = Q_BOXES * BOX - (BOX if self.mut == "expect_tx_too_small" else 0)
                self.full[s].expect_tx(expect)
                for k in range(Q_BOXES):
                    self.tma(("stage", s), lambda s=s, i=i, k=k: self.stage[s].__setitem__(k, i), self.full[s])
                yield lambda: True
            self.lse[s][p] = i  # plain store of this lane's lse/D part (released by its arrival)
            if not (self.mut == "arrive_before_stores" and p):
                self.full[s].arrive()
            yield lambda: True

    # ---- consumer warpgroup w ----
    def wgmma_issue(self, reads):
        """reads: [(loc, check)], check() raises on stale data. Returns an id to wait on."""
        for loc, chk in reads:
            chk()
            self.reading[loc] = self.reading.get(loc, 0) + 1
        gid = len(self.wgmma_done)
        self.wgmma_done[gid] = False

        def complete():
            for loc, chk in reads:
                chk()
                self.reading[loc] -= 1
            self.wgmma_done[gid] = True
        self.events.append(complete)
        return gid

    def consumer(self, w):
        L = self.L
        kv_ok = ("kv",), lambda: self.check("K/V", self.kv, ["kv"] * KV_BOXES)
        yield lambda: self.bar_kv.done(0)
        for i in range(self.n):
            s = i % STAGES
            b = i % (1 if self.mut == "one_ds_buffer" else DS_BUFS)
            par = (i // STAGES) & 1
            if self.mut == "consumer_parity":
                par ^= 1
            yield lambda s=s, par=par: self.full[s].done(par)
            st_ok = ("stage", s), lambda s=s, i=i: self.check(f"stage {s} (Q/dO)", self.stage[s], [i] * Q_BOXES)
            g = self.wgmma_issue([st_ok, kv_ok])        # Sᵀ = K·Qᵀ
            yield lambda g=g: self.wgmma_done[g]
            self.check("lse", self.lse[s], [i] * L)
            g = self.wgmma_issue([st_ok, kv_ok])        # dPᵀ = V·dOᵀ
            yield lambda g=g: self.wgmma_done[g]
            self.check("D", self.lse[s], [i] * L)
            owner = i & 1  # the consumer that computes step i's dQ
            if self.with_dq and i >= DS_BUFS and w != ((i - DS_BUFS) & 1) and self.mut != "no_ds_read_wait":
                yield self.ds_read[b].sync()
            if self.with_dq:
                self.write(("ds", b), lambda b=b, i=i: self.ds[b].__setitem__(w, i))
            g = self.wgmma_issue([st_ok])                # dV += Pᵀ·dO, dK += dSᵀ·Q
            if self.mut == "empty_before_wait":
                self.empty[s].arrive()
            yield lambda g=g: self.wgmma_done[g]
            if self.mut != "empty_before_wait" and self.mut != "no_empty_arrive":
                self.empty[s].arrive()
            if not self.with_dq:
                continue
            if w != owner:
                self.ds_full[b].arrive()
            # dQ of step i-1, one step late; the last step's dQ at once.
            jobs = []
            if i >= 1 and w == ((i - 1) & 1):
                jobs.append(i - 1)
            if i == self.n - 1 and w == owner:
                jobs.append(i)
            for j in jobs:
                bj = j % (1 if self.mut == "one_ds_buffer" else DS_BUFS)
                if self.mut == "no_ds_full_wait":
                    self.ds_full[bj].arrive()
                else:
                    yield self.ds_full[bj].sync()
                ds_ok = ("ds", bj), lambda bj=bj, j=j: self.check(f"dS buffer {bj}", self.ds[bj], [j, j])
                for _ in range(3):
                    g = self.wgmma_issue([ds_ok, kv_ok])  # dQ chunk = dS·K
                    yield lambda g=g: self.wgmma_done[g]
                if j + DS_BUFS < self.n or (self.mut == "ds_read_always" and j < i):
                    self.ds_read[bj].arrive()

    def run(self, max_actions=100000):
        agents = [self.producer(p) for p in range(self.L)] + [self.consumer(w) for w in range(2)]
        waits = [None] * len(agents)
        live = list(range(len(agents)))

        def advance(k):
            try:
                waits[k] = next(agents[k])
            except StopIteration:
                live.remove(k)
        for k in list(live):
            advance(k)
        for _ in range(max_actions):
            if not live:
                # The block's threads are done: a copy still in flight would write into shared
                # memory the SM may already have handed to the next block.
                if self.copies_in_flight:
                    raise Violation(f"block ends with {self.copies_in_flight} copies in flight")
                if any(bar.n for bar in self.ds_full + self.ds_read):
                    raise Violation("block ends with an unmatched named-barrier arrival")
                return
            ready = [k for k in live if waits[k]()]
            choices = [("agent", k) for k in ready] + [("event", e) for e in range(len(self.events))]
            if not choices:
                raise Violation(f"deadlock: agents {live} blocked, no event pending")
            kind, x = self.rng.choice(choices)
            if kind == "agent":
                advance(x)
            else:
                self.events.pop(x)()
        raise Violation("no progress bound reached")


MUTATIONS = ["expect_tx_too_small", "full_count_one", "arrive_before_stores", "no_empty_wait", "empty_wait_lane0_only",
             "producer_parity", "consumer_parity", "empty_before_wait", "no_empty_arrive", "empty_count_one_wg",
             "one_ds_buffer", "no_ds_full_wait", "no_ds_read_wait", "ds_read_always"]


def trial(n_steps, with_dq, lanes, mutation, seed):
    try:
        Model(n_steps, with_dq, lanes, mutation, random.Random(seed)).run()
        return None
    except Violation as e:
        return str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    configs = [(n, dq, p) for n in range(1, 9) for dq in (True, False) for p in (1, 2, 3)]
    ok = clean(f"protocol as in the kernel (n_steps 1..8 × dq on/off × 1-3 producer lanes × {args.schedules})",
               ((trial(n, dq, p, None, args.seed * 1_000_003 + k * 7919 + n * 31 + p), (n, dq, p, k))
                for n, dq, p in configs for k in range(args.schedules)))
    def runs(mut):
        for n, dq, p in configs:
            if mut in ("one_ds_buffer", "no_ds_full_wait", "no_ds_read_wait", "ds_read_always") and not dq:
                continue
            if mut in ("full_count_one", "arrive_before_stores", "empty_wait_lane0_only") and p == 1:
                continue  # these concern the lanes other than the issuing one
            for k in range(args.schedules // 3):
                yield trial(n, dq, p, mut, args.seed * 999_983 + k * 104_729 + n * 17 + p), f"n_steps={n} dq={dq}"
    for mut in MUTATIONS:
        ok = catches("mutation ", mut, runs(mut)) and ok
    print("model check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
