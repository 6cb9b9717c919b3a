#!/usr/bin/env python3
"""Model of the tma_pair kernels' CTA pairs (src/backend/cuda/kernels/grouped_gemm_tma.cu,
"CTA pairs": grouped_tma_pair_fwd_bf16 / _dx_bf16 / _fwd_swiglu_bf16; the SwiGLU forward's
copies are a wide forward tile's, its two pieces from the gate and the up map). No GPU; plain
python3.

What it replays, for clusters of two CTAs over random expert row counts:
- the pair walk (GemmWalk<2>): both CTAs find both row-tile slots of each pair tile with a cursor
  for the even slots and one for the odd; checked against a scan from expert 0. Required: the two
  CTAs of a cluster walk the same number of pair tiles with the same `shared` answers, every
  (row tile, column tile) of the product is computed and stored by exactly one CTA, and a phantom
  (slot 2y + 1 past the last row tile) appears only for CTA 1, stores nothing and shares CTA 0's
  expert;
- the ring of each CTA with the copies of both producers: each stage's "full" mbarrier (one
  arrival with expect_tx, transaction bytes that may arrive before it, from this CTA's copies and
  from the peer's multicast ones) and "empty" mbarrier (8 local and 8 remote consumer-warp
  arrivals); the producers, the copies in flight and the four consumer warpgroups run in random
  interleavings. Required: no deadlock; every stage a consumer reads holds exactly its k-step's A
  and B pieces (tags, not values: the index math of boxes and descriptors is tma()'s in
  grouped_gemm_model.py and the same code); no copy lands in a stage a consumer of either CTA
  may still read, nor in a "full" phase other than the one its round waits for; every stage is
  given back by the end;
- the end of each CTA: its producer warp, after its last k-step, waits for the last round of
  every stage to be released by both CTAs' consumers (drain_ring), and its other warps end
  without waiting. A CTA has ended once its producer and its consumers have; required: no copy
  lands in, and no remote arrival names, a CTA that has ended (its shared memory is gone).

- the weight product's pair walk (DwWalk<2>, "Weight product in CTA pairs"), one product (pairs
  of neighbouring row tiles of dW, a phantom past N) and two (twin: the same tile of each).
  Required: both CTAs of a cluster get the same expert, rows and column tile every round (so
  their X boxes, which each copies half of into both, are the same), every (product, expert, row
  tile, column tile) is stored by exactly one CTA, a phantom only when N has an odd number of row
  tiles (one product), and the squares' tile ids cover 0..2·pair tiles − 1 once each. Its ring is
  the forward's (the same produce_ring / consume_ring / drain_ring), with every pair shared.

  python3 bench/grouped_gemm_pair_model.py              (a few seconds)
  python3 bench/grouped_gemm_pair_model.py --mutations  (plants each bug of MUTATIONS in turn and
                                                         requires the replay to fail on it)
"""
import random
import sys

BM = 128; BN = 256; STAGES = 4; WARPS = 8
A_BYTES = 16384; FWD_PIECE = 16384; DX_PIECE = 8192
MUT = set()


def expert_rows(off, x, M):
    s = min(max(off[x] - off[0], 0), M)
    return s, min(max(off[x + 1] - off[0], s), M)


def scan(off, E, M, t):
    for x in range(E):
        s, en = expert_rows(off, x, M); tiles = (en - s + BM - 1) // BM
        if t < tiles: return x, s + t * BM, en
        t -= tiles
    return None


class Cursor:  # ggc::RowTileCursor
    def __init__(c): c.x = 0; c.first = 0

    def find(c, off, E, M, t):
        while c.x < E:
            s, en = expert_rows(off, c.x, M); tiles = (en - s + BM - 1) // BM
            if t - c.first < tiles: return c.x, s + (t - c.first) * BM, en
            c.first += tiles; c.x += 1
        return None


def walk(rank, cid, C, off, E, M, width):
    """GemmWalk<2>::next for CTA `rank` of cluster cid of C: (e, row0, rowEnd, j0, cols, shared)."""
    gx = (width + BN - 1) // BN
    total = gx * (((M + BM - 1) // BM + E + 1) // 2)
    even, odd = Cursor(), Cursor()
    r = 0
    while True:
        u = r * C + (cid + r) % C; r += 1
        if u >= total: return
        y = u // gx; j0 = (u - y * gx) * BN; cols = min(BN, width - j0)
        if 'one_cursor' in MUT: odd = even
        t0 = even.find(off, E, M, 2 * y)
        assert t0 == scan(off, E, M, 2 * y), ('even cursor', y)
        if t0 is None: return
        t1 = odd.find(off, E, M, 2 * y + 1)
        assert 'one_cursor' in MUT or t1 == scan(off, E, M, 2 * y + 1), ('odd cursor', y)
        if t1 is None: t1 = (t0[0], M, M)
        shared = t1[0] == t0[0] or 'always_shared' in MUT
        e, row0, rowEnd = t1 if rank == 1 else t0
        yield e, row0, rowEnd, j0, cols, shared


class Bar:
    """An mbarrier: `count` arrivals and a transaction count per phase; ph = completed phases."""
    def __init__(b, count): b.count = count; b.pending = count; b.tx = 0; b.ph = 0

    def _maybe_complete(b):
        if b.pending == 0 and b.tx == 0: b.ph += 1; b.pending = b.count

    def arrive(b, expect=0):
        b.tx += expect; b.pending -= 1; assert b.pending >= 0, 'more arrivals than the count'
        b._maybe_complete()

    def complete_tx(b, n):
        b.tx -= n; b._maybe_complete()


def run_cluster(off, E, M, width, red, fwd, C, cid, rng):
    ktiles = red // 64
    tiles = [list(walk(k, cid, C, off, E, M, width)) for k in (0, 1)]
    assert len(tiles[0]) == len(tiles[1]), 'the two CTAs walk different numbers of pair tiles'
    for a, b in zip(*tiles): assert a[5] == b[5] and a[3] == b[3], 'the CTAs disagree on shared or the column tile'
    full = [[Bar(1) for _ in range(STAGES)] for _ in (0, 1)]
    empty = [[Bar(WARPS * (1 if 'local_empty' in MUT else 2)) for _ in range(STAGES)] for _ in (0, 1)]
    stage = [[dict() for _ in range(STAGES)] for _ in (0, 1)]   # piece -> tag of what landed
    reading = [[0] * STAGES for _ in (0, 1)]                     # consumer warpgroups between wait and release
    inflight = []                                                # copies not yet landed: (cta, s, round, piece, tag, bytes)
    stored = []
    ended = [False, False]                                       # the CTA's shared memory is gone
    running = [3, 3]                                             # its producer and two consumer warpgroups still running

    def piece_bytes(cols): return (FWD_PIECE if fwd else DX_PIECE), ((2 if fwd else 4) >> (1 if cols <= BN // 2 else 0))

    def producer(k):
        it = 0
        for (e, row0, rowEnd, j0, cols, shared) in tiles[k]:
            size, pieces = piece_bytes(cols)
            for kt in range(ktiles):
                s = it % STAGES; n = it // STAGES
                if it >= STAGES:
                    while not empty[k][s].ph > n - 1: yield
                expect = A_BYTES + pieces * size
                if 'expect_half_b' in MUT and shared: expect = A_BYTES + (pieces + 1) // 2 * size
                full[k][s].arrive(expect)
                inflight.append((k, s, n, 'A', ('A', row0, kt), A_BYTES))
                for p in range(pieces):
                    tag = ('B', e, j0, kt, p)
                    if not shared: inflight.append((k, s, n, p, tag, size))
                    elif p % 2 == k or 'both_copy' in MUT:
                        for dst in (0, 1): inflight.append((dst, s, n, p, tag, size))
                it += 1
                yield
        # drain_ring: the waits before positions it..it + STAGES - 1 (the last round of every stage).
        if 'no_drain' not in MUT:
            for _ in range(STAGES):
                if it >= STAGES:
                    s = it % STAGES
                    while not empty[k][s].ph > it // STAGES - 1: yield
                it += 1
        finish(k)

    def finish(k):
        running[k] -= 1
        if running[k] == 0: ended[k] = True

    def consumer(k, half):
        it = 0
        for (e, row0, rowEnd, j0, cols, shared) in tiles[k]:
            _, pieces = piece_bytes(cols)
            for kt in range(ktiles):
                s = it % STAGES; n = it // STAGES
                while not full[k][s].ph > n: yield
                assert full[k][s].ph == n + 1, 'a full phase was lapped'
                got = stage[k][s]
                assert got.get('A') == ('A', row0, kt), ('CTA', k, 'reads A of', got.get('A'), 'for', (row0, kt))
                for p in range(pieces):
                    assert got.get(p) == ('B', e, j0, kt, p), ('CTA', k, 'piece', p, got.get(p), 'for', (e, j0, kt))
                reading[k][s] += 1
                yield  # the wgmma group is in flight
                if kt > 0 or 'release_current' in MUT: release(k, (it - 1) % STAGES if 'release_current' not in MUT else s)
                it += 1
            if ktiles > 0: release(k, (it - 1) % STAGES)
            if half == 0: stored.append((k, e, row0, rowEnd, j0, cols))  # (each warpgroup stores its 64 rows)
            yield
        finish(k)

    def release(k, s):
        # Four warps of this warpgroup: each arrives here and (CL = 2) at the peer's barrier.
        reading[k][s] -= 1
        assert reading[k][s] >= 0
        for _ in range(4):
            empty[k][s].arrive()
            if 'local_empty' not in MUT:
                assert not ended[1 - k], ('a remote arrival names CTA', 1 - k, 'after it ended')
                empty[1 - k][s].arrive()

    def land(c):
        dst, s, n, piece, tag, size = c
        assert not ended[dst], ('a copy lands in CTA', dst, 'after it ended')
        assert reading[dst][s] == 0, ('a copy lands in CTA', dst, 'stage', s, 'while a consumer reads it')
        assert full[dst][s].ph == n, ('a copy lands in phase', full[dst][s].ph, 'of a full barrier, for round', n)
        stage[dst][s][piece] = tag
        full[dst][s].complete_tx(size)

    actors = [producer(0), producer(1)] + [consumer(k, h) for k in (0, 1) for h in (0, 1)]
    alive = list(actors)
    steps = 0
    while alive or inflight:
        steps += 1
        assert steps < 200000, 'no progress: a deadlock'  # blocked actors yield and re-check
        if inflight and (not alive or rng.random() < 0.4):
            land(inflight.pop(rng.randrange(len(inflight))))
            continue
        a = rng.choice(alive)
        try: next(a)
        except StopIteration: alive.remove(a)
    for k in (0, 1):
        for s in range(STAGES): assert reading[k][s] == 0
        assert ended[k]
    return stored


def check(counts, width, red, fwd, C, base=0, seed=0):
    rng = random.Random(seed)
    off = [base]
    for c in counts: off.append(off[-1] + c)
    E, M = len(counts), sum(counts)
    seen = {}
    for cid in range(C):
        for (k, e, row0, rowEnd, j0, cols) in run_cluster(off, E, M, width, red, fwd, C, cid, rng):
            if row0 >= M:
                assert k == 1 and rowEnd == M, 'a phantom on CTA 0'
                continue
            seen[(row0, j0)] = seen.get((row0, j0), 0) + 1
    want = set()
    for x in range(E):
        s, en = expert_rows(off, x, M)
        for r0 in range(s, en, BM):
            for j0 in range(0, width, BN): want.add((r0, j0))
    assert set(seen) == want, ('tiles', sorted(set(seen) ^ want)[:5])
    assert all(v == 1 for v in seen.values()), 'a tile computed twice'


def dw_walk(rank, cid, C, off, E, M, N, K, twin):
    """DwWalk<2>::next for CTA `rank` of cluster `cid` of C: (expert, i0, j0, s, rows, id, second) per round."""
    tn = (N + BM - 1) // BM; tk = (K + BN - 1) // BN
    per = (tn if twin else (tn + 1) // 2) * tk
    total = E * per; r = 0; out = []
    while True:
        t = r * C + (cid + r) % C; r += 1
        if t >= total: return out
        e = t // per; rem = t - e * per; y = rem // tk
        j0 = (rem - y * tk) * BN
        i0 = (y if twin and 'dw_twin_rows' not in MUT else 2 * y + rank) * BM
        tid = 2 * t + rank if 'dw_id' not in MUT else t + rank
        s, en = expert_rows(off, e, M)
        out.append((e, i0, j0, s, en - s, tid, 1 if twin and rank == 1 else 0))


def check_dw(counts, N, K, C, twin, base=0):
    E = len(counts); off = [base]
    for c in counts: off.append(off[-1] + c)
    M = off[-1] - base
    tn = (N + BM - 1) // BM; tk = (K + BN - 1) // BN
    pair_tiles = E * tk * (tn if twin else (tn + 1) // 2)
    stored = {}; ids = []
    for cid in range(C):
        w0, w1 = dw_walk(0, cid, C, off, E, M, N, K, twin), dw_walk(1, cid, C, off, E, M, N, K, twin)
        assert len(w0) == len(w1), ('walk lengths', cid)
        for a, b in zip(w0, w1):
            assert a[0] == b[0] and a[2:5] == b[2:5], ('the pair disagrees on expert, column tile or rows', a, b)
            for (e, i0, j0, _s, _rows, tid, second) in (a, b):
                ids.append(tid)
                if i0 >= N:
                    assert not twin and tn % 2 == 1 and i0 == tn * BM, ('phantom', e, i0)
                    continue
                key = (second, e, i0, j0)
                assert key not in stored, ('stored twice', key)
                stored[key] = True
    want = {(p, e, i * BM, j * BN) for p in range(2 if twin else 1) for e in range(E) for i in range(tn) for j in range(tk)}
    assert set(stored) == want, ('tiles missing', len(want - set(stored)))
    assert sorted(ids) == list(range(2 * pair_tiles)), 'squares tile ids are not 0..2·pair tiles − 1 once each'


def dw_suite():
    # N: 1 row tile (a phantom beside it), 2, 11 (a phantom at the end), 16; K: a narrow column tile, 5 wide + 1 narrow, 8 wide.
    for counts in ([0, 1, 130, 7, 64], [300, 0, 257, 1], [1]):
        for N in (64, 192, 1408, 2048):
            for K in (64, 1408, 2048):
                for C in (1, 3, 66):
                    for twin in (0, 1):
                        check_dw(counts, N, K, C, twin, base=77)


def suite():
    for seed in range(3):
        # Zero-row experts, an odd number of row tiles (a phantom), experts that straddle pairs;
        # forward 2 k-steps over a wide and a narrow column tile, data 3 k-steps.
        check([0, 1, 130, 7, 64], 320, 128, True, C=2, base=1000, seed=seed)
        check([0, 1, 130, 7, 64], 192, 192, False, C=3, seed=seed)
        # Many experts of 1-3 row tiles: shared and unshared pairs mixed, the ring wrapping often.
        check([5, 0, 200, 0, 0, 64, 1, 300, 0, 128, 129, 2, 400], 448, 64, True, C=3, seed=seed)
        check([300, 0, 257, 1], 640, 320, False, C=2, seed=seed)
        # One row tile in all (M = 1): one pair, CTA 1 a phantom; more clusters than pair tiles.
        check([1], 128, 64, True, C=4, seed=seed)
    dw_suite()
    print('ok')


MUTATIONS = {
    'one_cursor': 'one cursor for both slots (it moves backwards from 2y + 1 to the next 2y)',
    'always_shared': 'the weight tile treated as shared across two experts',
    'local_empty': "the empty barrier counts only this CTA's consumers (the peer's copies may overwrite a stage still read)",
    'expect_half_b': 'expect_tx counts only the pieces this CTA copies',
    'both_copy': 'both CTAs copy every shared piece into both',
    'release_current': 'the stage the in-flight wgmma group reads is given back',
    'no_drain': "the producer warp ends after its last copy (the peer's consumers may still arrive on this CTA's barriers)",
    'dw_twin_rows': 'the weight pair of two products walks neighbouring row tiles, as one product does',
    'dw_id': "a weight pair's squares id is t + rank (the next pair's CTA 0 overwrites CTA 1's partials)",
}


def mutations():
    from planted_bugs import check_planted
    check_planted(MUTATIONS, MUT, suite)


if __name__ == '__main__':
    if '--mutations' in sys.argv: mutations()
    else: suite()
