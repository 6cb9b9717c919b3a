#!/usr/bin/env python3
"""Randomised interleaving model of the barrier protocol of the Hopper MLA backward
(src/backend/cuda/kernels/mla_attention_bwd_hopper.cu). No GPU; plain python3.

Agents follow the kernel's program order step by step; a scheduler picks, at random, any agent
whose next action is enabled, or any pending asynchronous event (a cp.async piece landing, a
wgmma group completing), so copies land and GEMMs finish in arbitrary order and at arbitrary
times. Modelled:
  - producer threads (P of them; each copies its part of every tile, like the 128 producer
    threads): K/V once, then per step Q/dO (cp.async, lands later) and lse/D (plain stores),
    cp.async.wait_group 0, arrive kv_full (step 0) and full[s]; before refilling stage s it waits
    on empty[s] with parity ((i/2) - 1) & 1;
  - two consumer warpgroups (one agent each; an mbarrier arrival of a warpgroup counts as its
    128 threads): wait kv_full, then per step wait full[s] (parity (i/2) & 1), Sᵀ GEMM (reads
    Q, K), lse, dPᵀ GEMM (reads dO, V), D, store dSᵀ into buffer i%2, dV/dK GEMM (reads Q, dO),
    wait, arrive empty[s], named barrier (both warpgroups), dQ GEMMs (read both halves of dSᵀ
    buffer i%2, and K) — chunks {0,2} or {1} — each waited before the next;
  - mbarriers with phase bit and pending count (parity waits exactly as try_wait.parity:
    done when the current phase parity differs from the one waited on), and bar.sync
    generations.
Checks: no deadlock (nothing enabled while an agent is unfinished); every read (plain, or a
wgmma's at issue and again at completion) sees the data of the step it belongs to (no unlanded
or stale stage, lse/D or dSᵀ); no write (a cp.async landing, a plain store) into a location an
in-flight wgmma is reading. Planted mutations must each fail at least one schedule.

Usage: python3 bench/attention_bwd_protocol_model.py [--schedules 300] [--seed 1]
"""
import argparse
import random
import sys

STAGES = 2


class Violation(Exception):
    pass


class MBar:
    def __init__(self, count):
        self.count, self.pending, self.phase = count, count, 0

    def arrive(self, n=1):
        self.pending -= n
        if self.pending < 0:
            raise Violation("mbarrier over-arrival")
        if self.pending == 0:
            self.phase ^= 1
            self.pending = self.count

    def done(self, parity):  # mbarrier.try_wait.parity
        return self.phase != parity


class Model:
    def __init__(self, n_steps, with_dq, producers, mutation, rng):
        self.n, self.with_dq, self.P, self.mut, self.rng = n_steps, with_dq, producers, mutation, rng
        self.kv = [None] * producers                       # part p of K/V: 'kv' once landed
        self.stage = [[None] * producers for _ in range(STAGES)]   # Q/dO parts: step tag
        self.lse = [[None] * producers for _ in range(STAGES)]     # lse/D parts: step tag
        self.ds = [[None, None] for _ in range(2)]          # dSᵀ buffer b, half w: step tag
        self.reading = {}                                   # location -> in-flight wgmma reads
        self.bar_kv = MBar(producers)
        self.full = [MBar(producers) for _ in range(STAGES)]
        self.empty = [MBar(1 if mutation == "empty_count_one_wg" else 2) for _ in range(STAGES)]
        self.named_gen, self.named_count = 0, 0
        self.events = []                                    # pending async events: callables
        self.pending_copies = [0] * producers
        self.wgmma_done = {}                                # id -> bool

    # ---- locations ----
    def write(self, loc, apply):
        if self.reading.get(loc, 0):
            raise Violation(f"write into {loc} while a wgmma reads it")
        apply()

    def check(self, what, got, want):
        if got != want:
            raise Violation(f"{what}: read {got!r}, expected {want!r}")

    # ---- producer thread p ----
    def producer(self, p):
        def copy(loc, apply):
            self.pending_copies[p] += 1

            def land():
                self.write(loc, apply)
                self.pending_copies[p] -= 1
            self.events.append(land)

        copy(("kv",), lambda: self.kv.__setitem__(p, "kv"))
        for i in range(self.n):
            s = i % STAGES
            if i >= STAGES and self.mut != "no_empty_wait":
                par = ((i // STAGES) - 1) & 1
                if self.mut == "producer_parity":
                    par = (i // STAGES) & 1
                yield lambda s=s, par=par: self.empty[s].done(par)
            copy(("stage", s), lambda s=s, i=i: self.stage[s].__setitem__(p, i))
            self.lse[s][p] = i  # plain store (visible to waiters after the arrival below)
            if self.mut != "publish_before_landing":
                yield lambda: self.pending_copies[p] == 0
            if i == 0:
                self.bar_kv.arrive()
            self.full[s].arrive()
        yield lambda: self.pending_copies[p] == 0  # a block may not exit with copies in flight

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
        P = self.P
        kv_ok = ("kv",), lambda: self.check("K/V", self.kv, ["kv"] * P)
        yield lambda: self.bar_kv.done(0)
        for i in range(self.n):
            s = i % STAGES
            b = 0 if self.mut == "single_ds_buffer" else i & 1
            par = (i // STAGES) & 1
            if self.mut == "consumer_parity":
                par ^= 1
            yield lambda s=s, par=par: self.full[s].done(par)
            st_ok = ("stage", s), lambda s=s, i=i: self.check(f"stage {s} (Q/dO)", self.stage[s], [i] * P)
            g = self.wgmma_issue([st_ok, kv_ok])        # Sᵀ = K·Qᵀ
            yield lambda g=g: self.wgmma_done[g]
            self.check("lse", self.lse[s], [i] * P)
            g = self.wgmma_issue([st_ok, kv_ok])        # dPᵀ = V·dOᵀ
            yield lambda g=g: self.wgmma_done[g]
            self.check("D", self.lse[s], [i] * P)
            if self.with_dq:
                self.write(("ds", b), lambda b=b, i=i: self.ds[b].__setitem__(w, i))
            g = self.wgmma_issue([st_ok])                # dV += Pᵀ·dO, dK += dSᵀ·Q
            if self.mut == "empty_before_wait":
                self.empty[s].arrive()
            yield lambda g=g: self.wgmma_done[g]
            if self.mut != "empty_before_wait" and self.mut != "no_empty_arrive":
                self.empty[s].arrive()
            if self.with_dq:
                if self.mut != "no_named_barrier":
                    self.named_count += 1
                    gen = self.named_gen
                    if self.named_count == 2:
                        self.named_gen, self.named_count = self.named_gen + 1, 0
                    yield lambda gen=gen: self.named_gen > gen
                ds_ok = ("ds", b), lambda b=b, i=i: self.check(f"dS buffer {b}", self.ds[b], [i, i])
                for _ in range(2 if (i + w) % 2 == 0 else 1):
                    g = self.wgmma_issue([ds_ok, kv_ok])  # dQ chunk = dS·K
                    yield lambda g=g: self.wgmma_done[g]

    def run(self, max_actions=100000):
        agents = [self.producer(p) for p in range(self.P)] + [self.consumer(w) for w in range(2)]
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
            if not live and not self.events:
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


MUTATIONS = ["publish_before_landing", "no_empty_wait", "producer_parity", "consumer_parity", "empty_before_wait",
             "no_empty_arrive", "empty_count_one_wg", "single_ds_buffer", "no_named_barrier"]


def trial(n_steps, with_dq, producers, mutation, seed):
    try:
        Model(n_steps, with_dq, producers, mutation, random.Random(seed)).run()
        return None
    except Violation as e:
        return str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    configs = [(n, dq, p) for n in range(1, 9) for dq in (True, False) for p in (1, 2)]
    total, failures = 0, []
    for n, dq, p in configs:
        for k in range(args.schedules):
            err = trial(n, dq, p, None, args.seed * 1_000_003 + k * 7919 + n * 31 + p)
            total += 1
            if err:
                failures.append((n, dq, p, k, err))
    print(f"protocol as in the kernel: {total} schedules (n_steps 1..8 × dq on/off × 1-2 producer threads "
          f"× {args.schedules}): {'OK' if not failures else f'{len(failures)} FAILED'}")
    for f in failures[:5]:
        print("   ", f)
    ok = not failures
    for mut in MUTATIONS:
        caught, example = 0, None
        runs = 0
        for n, dq, p in configs:
            if mut in ("single_ds_buffer", "no_named_barrier") and not dq:
                continue
            for k in range(args.schedules // 3):
                err = trial(n, dq, p, mut, args.seed * 999_983 + k * 104_729 + n * 17 + p)
                runs += 1
                if err:
                    caught += 1
                    example = example or f"n_steps={n} dq={dq}: {err}"
        print(f"mutation {mut:24s}: fails {caught}/{runs} schedules{'' if caught else '  <-- NOT CAUGHT'}"
              + (f"  e.g. {example}" if example else ""))
        ok = ok and caught > 0
    print("model check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
