#!/usr/bin/env python3
"""Model of the tma set's weight product (src/backend/cuda/kernels/grouped_gemm_tma_dw.cuh,
grouped_tma_dw_bf16 / _gbf16: dW_e[N, K] = dY_eᵀ·X_e + beta·dW_e, persistent CTAs). No GPU;
python3 with numpy. The sibling of grouped_gemm_model.py (forward and data products).

It replays, as the kernel writes them:
- the tile walk: in round r CTA b takes tile r·grid + (b + r) mod grid (rotated_tile) of
  E·ceil(N/128)·ceil(K/256) (expert-major, column tiles fastest), stopping at the first one past
  the end; producer and consumers each reading the offsets on their own; every tile is taken once;
- the copy engine's boxes: (64 values, 64 rows) of dY [M, N] and X [M, K] at (column, the
  expert's first row + 64·kt) under the 128-byte swizzle, zeros outside the tensor, byte counts
  against the producer's expect_tx (two X blocks for a narrow column tile);
- each consumer warpgroup zeroing rows valid_last.. of its own dY column block in the last step;
- the MN-major wgmma descriptors (LBO 8 KiB, SBO 1024, k16 step +2048 bytes) read under the
  swizzle model of mla_attention_hopper.cuh, m64n256 or m64n128 (narrow);
- the epilogue's masks, beta 0 (no read; zeros for an expert with no rows) and beta 1, f32 or
  bf16 (one rounding) gradients, into NaN-poisoned gradients;
- the full/empty mbarrier ring running across tiles (ring position `it` on both sides) under
  random interleavings of the producer thread and both consumer warpgroups: no stage refilled
  while a wgmma group or a zeroing warpgroup still reads it, none read before its copies landed,
  no deadlock, and every stage back in the empty state at the end.
Integer inputs make every product exact, so results must equal numpy's bit for bit (bf16:
numpy's f32 sum rounded once, as the kernel rounds).

`--mutations` plants each of a list of bugs in turn and requires the replay to fail on it.

  python3 bench/grouped_gemm_tma_dw_model.py               (~20 s on one core)
  python3 bench/grouped_gemm_tma_dw_model.py --mutations   (~1 min)
"""
import sys

import numpy as np

BM, BN, BK, STAGES = 128, 256, 64, 4
A_BYTES = BM * BK * 2
B_BYTES = BN * BK * 2
STAGE = A_BYTES + B_BYTES
DW_BLOCK = BK * 64 * 2
CONSUMER_WARPS = 8

MUT = set()  # planted bugs (names in MUTATIONS)


def sw(addr):
    return addr ^ (((addr >> 7) & 7) << 4)


def bf16_round(v):
    """float32 → nearest-even bf16, as cvt.rn.bf16x2.f32."""
    b = np.asarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
    return b.astype(np.uint32).view(np.float32)


def box(sm, dst, T, c0, c1):
    """cp.async.bulk.tensor.2d box (64 innermost, 64 rows) of T[dim1][dim0] at (c0, c1) into dst."""
    assert dst % 1024 == 0 and c0 >= 0 and c1 >= 0
    y, x = np.meshgrid(np.arange(64), np.arange(64), indexing='ij')
    r, c = c1 + y, c0 + x
    inside = (r < T.shape[0]) & (c < T.shape[1])
    v = np.zeros((64, 64))
    v[inside] = T[r[inside], c[inside]]
    sm[sw(dst + y * 128 + 2 * x) // 2] = v
    return 64 * 64 * 2


def read_mn(sm, start, lbo, sbo, R):
    """wgmma MN-major operand (R values × 16 k) at descriptor start address `start`."""
    x, k = np.meshgrid(np.arange(R), np.arange(16), indexing='ij')
    a = start + (x // 64) * lbo + (k // 8) * sbo + (k % 8) * 128 + (x % 64) * 2
    return sm[sw(a) // 2]


def tiles_of(E, N, K):
    return E, (N + BM - 1) // BM, (K + BN - 1) // BN


def dw_tile(t, tn, tk, off, M):
    per = tn * tk
    e = t // per
    r = t - e * per
    i0 = (r // tk) * BM
    j0 = (r % tk) * BN
    base = off[0]
    s = min(max(off[e] - base, 0), M)
    en = min(max(off[e + 1] - base, s), M)
    if 'ktiles_floor' in MUT:
        return e, i0, j0, s, en - s, (en - s) // BK
    return e, i0, j0, s, en - s, (en - s + BK - 1) // BK


def producer_steps(d, K):
    """The copies of each k-step of tile d: [(dst offset in the stage, tensor, c0, row)], and expect_tx."""
    e, i0, j0, s, rows, ktiles = d
    narrow = K - j0 <= (BN // 2 if 'producer_narrow_192' not in MUT else 192)
    bblocks = 2 if narrow else 4
    expect = A_BYTES + bblocks * DW_BLOCK
    if 'expect_full_b' in MUT:
        expect = A_BYTES + B_BYTES
    steps = []
    for kt in range(ktiles):
        row = s + kt * BK
        cps = [(0, 'dy', i0, row), (DW_BLOCK, 'dy', i0 + 64 if 'a_block_col' not in MUT else i0 + 128, row)]
        for b in range(bblocks):
            cps.append((A_BYTES + b * DW_BLOCK, 'x', j0 + 64 * b, row))
        steps.append(cps)
    return steps, expect


def rotated_tiles(b, grid, total):
    """CTA b's tiles in walk order, as rotated_tile(r) in the kernel."""
    r = 0
    while True:
        t = r * grid + (b + r) % grid
        if 'rotation_no_wrap' in MUT:
            t = r * grid + b + r
        if t >= total:
            return
        yield t
        r += 1


def cta_data(b, grid, dY, X, G, off, E, M, N, K, beta, gdtype):
    """CTA b's tiles, in order: copies, zeroing, wgmmas and the epilogue into G (list of flat arrays)."""
    _, tn, tk = tiles_of(E, N, K)
    sm = np.full(STAGES * STAGE // 2, np.nan)
    it = 0
    for t in rotated_tiles(b, grid, E * tn * tk):
        d = dw_tile(t, tn, tk, off, M)
        e, i0, j0, s, rows, ktiles = d
        if ktiles == 0 and (beta or 'skip_empty_beta0' in MUT):
            continue  # no rows: the gradient keeps its value (beta 0: zeros stored below)
        cols = min(BN, K - j0)
        WN = 128 if cols <= (BN // 2 if 'consumer_narrow_192' not in MUT else 192) else 256
        acc = np.zeros((2, 64, 256))
        steps, expect = producer_steps(d, K)
        valid_last = rows - (ktiles - 1) * BK
        if 'valid_off_by_one' in MUT:
            valid_last -= 1
        for kt, cps in enumerate(steps):
            st = (it % STAGES) * STAGE
            sm[st // 2:(st + STAGE) // 2] = np.nan  # what the stage held before is never read
            got = sum(box(sm, st + o, dY if which == 'dy' else X, c0, c1) for o, which, c0, c1 in cps)
            assert got == expect, ('expect_tx', got, expect)
            # The warpgroups are not synchronised with each other: one may zero and read its block
            # before the other starts (either order).
            for half in ((0, 1) if (t + kt) % 2 == 0 else (1, 0)):
                ta = st + half * DW_BLOCK
                tb = st + A_BYTES
                ta_zero = st + (1 - half) * DW_BLOCK if 'zero_other_block' in MUT else ta
                if kt == ktiles - 1 and valid_last < BK and 'no_zeroing' not in MUT:
                    for t128 in range(128):  # the warpgroup's threads, whole 128-byte rows
                        for q in range(valid_last * 8 + t128, BK * 8, 128):
                            a = ta_zero + (q >> 3) * 128 + (q & 7) * 16
                            assert a % 16 == 0
                            sm[a // 2:a // 2 + 8] = 0
                lbo = DW_BLOCK if 'lbo_1024' not in MUT else 1024
                for kk in range(BK // 16):
                    Am = read_mn(sm, ta + kk * 2048, lbo, 1024, 64)
                    Bm = read_mn(sm, tb + kk * 2048, lbo, 1024, WN)
                    assert not np.isnan(Am).any() and not np.isnan(Bm).any(), ('read an unwritten stage byte', t, kt)
                    acc[half][:, :WN] += Am @ Bm.T
            it += 1
        # epilogue (dw_store): rows i < N − i0, columns col < cols, pairs (col, col + 1)
        C = G[e]
        rows_out = N - i0 if 'rows_out_bm' not in MUT else BM
        for tid in range(128, 384):
            half = (tid >> 7) - 1
            w = (tid >> 5) & 3
            lane = tid & 31
            for h in range(2):
                i = half * 64 + w * 16 + (lane >> 2) + 8 * h
                if i >= rows_out:
                    continue
                for j in range(32):
                    col = 8 * j + 2 * (lane & 3)
                    if col >= cols:
                        continue
                    idx = (i0 + i) * K + j0 + col
                    assert 0 <= idx and idx + 2 <= C.size, ('store out of the gradient', e, idx)
                    lo, hi = acc[half][16 * w + (lane >> 2) + 8 * h][col], acc[half][16 * w + (lane >> 2) + 8 * h][col + 1]
                    old = (C[idx], C[idx + 1]) if beta else (0.0, 0.0)
                    v = np.array([lo + old[0], hi + old[1]], dtype=np.float32)
                    C[idx:idx + 2] = bf16_round(v) if gdtype == 'bf16' else v


def run(counts, K, N, base, beta, gdtype, grid, tail=0, seed=7):
    """dW over `counts` rows per expert (offsets from `base`), `tail` rows in no expert, `grid` CTAs."""
    rng = np.random.default_rng(seed)
    E = len(counts)
    M = sum(counts) + tail
    off = [base]
    for c in counts:
        off.append(off[-1] + c)
    st = [o - base for o in off]
    X = rng.integers(-3, 4, (M, K)).astype(float)
    dY = rng.integers(-3, 4, (M, N)).astype(float)
    G0 = [rng.integers(-3, 4, (N, K)).astype(np.float32) for _ in counts]
    if gdtype == 'bf16':
        G0 = [bf16_round(g) for g in G0]
    G = [np.full(N * K, np.nan, dtype=np.float32) if beta == 0 else g.copy().ravel() for g in G0]
    for b in range(grid):
        cta_data(b, grid, dY, X, G, off, E, M, N, K, beta, gdtype)
    for e in range(E):
        prod = (dY[st[e]:st[e + 1]].T @ X[st[e]:st[e + 1]]).astype(np.float32)
        ref = prod + (G0[e] if beta else 0)
        if gdtype == 'bf16':
            ref = bf16_round(ref.astype(np.float32))
        got = G[e].reshape(N, K)
        assert not np.isnan(got).any(), f'dW of expert {e} ({counts[e]} rows): unwritten elements'
        assert np.array_equal(got, ref), f'dW of expert {e} ({counts[e]} rows) differs'
    _, tn, tk = tiles_of(E, N, K)
    ring(E * tn * tk, grid, lambda t: dw_tile(t, tn, tk, off, M), beta, trials=20, seed=seed)
    print('ok', counts, 'K', K, 'N', N, 'base', base, 'beta', beta, gdtype, 'grid', grid, 'tail', tail)


def ring(total, grid, tile, beta, trials, seed):
    """The full/empty ring of each CTA across its tiles, under random interleavings."""
    rng = np.random.default_rng(seed)
    for b in range(grid):
        mine = [tile(t) for t in rotated_tiles(b, grid, total)]
        for _ in range(trials):
            full = [[0, 0] for _ in range(STAGES)]
            empty = [[0, 0] for _ in range(STAGES)]

            def arrive(bar, count):
                bar[1] += 1
                if bar[1] == count:
                    bar[0] += 1
                    bar[1] = 0

            def passes(bar, parity):
                return (bar[0] & 1) != parity

            holds = [None] * STAGES  # ring position whose copies a stage holds
            reading = [set(), set()]  # positions a consumer warpgroup's wgmmas (or zeroing) still read

            def producer():
                it = 0
                for d in mine:
                    if d[5] == 0:
                        continue
                    for kt in range(d[5]):
                        s = it % STAGES
                        if it >= STAGES:
                            while not passes(empty[s], (it // STAGES - 1) & 1):
                                yield
                        assert all(x % STAGES != s for r in reading for x in r), ('refill under a reader', it)
                        holds[s] = it
                        yield  # the copies land later
                        arrive(full[s], 1)
                        it += 1

            def consumer(wg):
                it = 0
                for d in mine:
                    if d[5] == 0 and beta:
                        continue
                    for kt in range(d[5]):
                        s = it % STAGES
                        while not passes(full[s], (it // STAGES) & 1):
                            yield
                        assert holds[s] == it, ('stage read before its copies', it, holds[s])
                        reading[wg].add(it)
                        yield  # zeroing (last step) and the wgmmas run
                        reading[wg].discard(it - 1)  # wait_group 1: group it − 1 is complete, group it may still read
                        release = it if 'release_current' in MUT else it - 1
                        if kt > 0 or 'release_current' in MUT:
                            for _ in range(4):  # lane 0 of each of the warpgroup's 4 warps
                                arrive(empty[release % STAGES], CONSUMER_WARPS)
                        it += 1
                        yield
                    # wait_group 0, then the tile's last stage
                    reading[wg].clear()
                    if d[5] > 0 and 'no_last_release' not in MUT and 'release_current' not in MUT:
                        for _ in range(4):
                            arrive(empty[(it - 1) % STAGES], CONSUMER_WARPS)
                    yield  # the epilogue

            live = [producer(), consumer(0), consumer(1)]
            steps = 0
            while live:
                a = live[rng.integers(len(live))]
                try:
                    next(a)
                except StopIteration:
                    live.remove(a)
                steps += 1
                assert steps < 200000, ('deadlock', b)


def suite():
    # Experts with 0, 1, 63, 64, 65 and 130 rows (row tails, a last step of one row, whole steps),
    # offsets from a nonzero base, rows in no expert after the last one; K = 320: a wide and a
    # narrow column tile (64 valid of 256: n128 with two X blocks), N = 192: a second row tile
    # with 64 valid rows (its second dY block wholly outside the tensor: zeros).
    counts = [0, 1, 65, 130, 0, 63, 64]
    for beta in (0, 1):
        for gdtype in ('f32', 'bf16'):
            run(counts, 320, 192, 1000, beta, gdtype, grid=5, tail=9)
    # More tiles than CTAs in each CTA (the ring across tiles), an expert spanning many steps;
    # K = 448: a column tile of 192 valid columns (wide, X's last block zeros).
    run([2, 300, 0, 129], 448, 128, 3, 1, 'f32', grid=3)
    run([1], 64, 64, 0, 0, 'f32', grid=1)


MUTATIONS = {
    'no_zeroing': "rows past the expert's end are not zeroed",
    'zero_other_block': "each warpgroup zeroes the other warpgroup's dY block",
    'valid_off_by_one': 'one row too many zeroed in the last step',
    'ktiles_floor': 'the last partial step is dropped',
    'a_block_col': "dY's second block from the wrong columns",
    'lbo_1024': 'descriptor LBO of 1024 instead of 8 KiB',
    'producer_narrow_192': 'the producer copies two X blocks for a 192-column tile',
    'consumer_narrow_192': 'the consumers run n128 on a 192-column tile',
    'expect_full_b': 'expect_tx of four X blocks on a narrow tile',
    'skip_empty_beta0': 'an expert with no rows is skipped under beta 0',
    'rows_out_bm': 'rows past N stored',
    'release_current': "the stage a wgmma group still reads is released",
    'no_last_release': "a tile's last stage is never released",
    'rotation_no_wrap': 'round r shifted by r without the wrap (tiles taken twice or never)',
}


def mutations():
    from planted_bugs import check_planted
    check_planted(MUTATIONS, MUT, suite)


if __name__ == '__main__':
    if '--mutations' in sys.argv:
        mutations()
    else:
        suite()
