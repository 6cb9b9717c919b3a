#!/usr/bin/env python3
"""Replay of the ring-slot index decode of the Hopper MLA kernels (no GPU; plain python3):
the forward's work_item / ring_slot_tiles / item_tile (mla_attention_fwd_hopper.cu) and the
backward's key_tile (mla_attention_bwd_hopper.cu), as Python copies of their arithmetic.

For cp = 2, 3, 4 ranks, chunks c = 128 and 256 and every rank, it maps each (query, key) pair the
kernels would compute (slot j holding the k/v of rank (rank - j) mod cp, both in zigzag order)
to global positions and checks that the pairs are exactly the causal pairs of the rank's
queries over the whole sequence, each computed once: forward per query tile (slot 0's tiles
from the diagonal down, only the first masked; then each later slot's tiles unmasked), backward
per key tile (the query rows from its first query tile on, masked in slot 0 only). A planted
change of each rule (the visible length of a lower rank's slot, the first query tile of a higher
rank's slot, the masked tile) must make the check fail.
"""
BN, BM_FWD, BM_BWD = 128, 128, 64


def zigzag(cp, rank, c):
    """Global position of each of a rank's 2c local rows: chunks rank and 2cp-1-rank."""
    return [rank * c + i for i in range(c)] + [(2 * cp - 1 - rank) * c + i for i in range(c)]


def slot_tiles(n, rank, split, j, q0, bug=None):
    """ring_slot_tiles: key tiles of slot j >= 1 that the query tile at q0 sees."""
    src = (rank - j + n) % n
    if src < rank:
        return (2 * split if bug == 'lower sees all' else split) // BN
    return 2 * split // BN if q0 >= split else 0


def forward_pairs(n, rank, c, bug=None):
    L, split, pairs, count = 2 * c, c, set(), 0
    qpos = zigzag(n, rank, c)
    for q0 in range(0, L, BM_FWD):
        n0 = (min(q0 + BM_FWD, L) + BN - 1) // BN
        n_tiles = n0 + sum(slot_tiles(n, rank, split, j, q0, bug) for j in range(1, n))
        for i in range(n_tiles):
            if i < n0:
                slot, k0 = 0, (n0 - 1 - i) * BN
            else:
                rest, slot = i - n0, 1
                while rest >= slot_tiles(n, rank, split, slot, q0, bug):
                    rest -= slot_tiles(n, rank, split, slot, q0, bug)
                    slot += 1
                k0 = rest * BN
            kpos = zigzag(n, (rank - slot + n) % n, c)
            masked = i == 0 if bug != 'mask every slot-0 tile but the first' else (slot == 0 and i > 0)
            for q in range(q0, q0 + BM_FWD):
                for k in range(k0, k0 + BN):
                    if masked and k > q:
                        continue
                    pairs.add((qpos[q], kpos[k]))
                    count += 1
    return pairs, count


def key_tile(y, n, rank, split, L, bug=None):
    """key_tile: (slot, k0, first query tile) of grid row y."""
    n0 = (L + BN - 1) // BN
    if y < n0:
        return 0, y * BN, y * BN // BM_BWD
    y -= n0
    j = 1
    while True:
        src = (rank - j + n) % n
        t = (split if src < rank else 2 * split) // BN
        if y < t:
            first = 0 if src < rank else (0 if bug == 'higher from row 0' else split // BM_BWD)
            return j, y * BN, first
        y -= t
        j += 1


def backward_pairs(n, rank, c, bug=None):
    L, split, pairs, count = 2 * c, c, set(), 0
    qpos = zigzag(n, rank, c)
    tiles = (L + BN - 1) // BN + sum((split if (rank - j + n) % n < rank else 2 * split) // BN for j in range(1, n))
    for y in range(tiles):
        slot, k0, first = key_tile(y, n, rank, split, L, bug)
        kpos = zigzag(n, (rank - slot + n) % n, c)
        for q in range(first * BM_BWD, L):
            for k in range(k0, k0 + BN):
                if slot == 0 and k > q:
                    continue
                pairs.add((qpos[q], kpos[k]))
                count += 1
    return pairs, count


def check(bug=None):
    for n in (2, 3, 4):
        for c in (128, 256):
            S = 2 * n * c
            for rank in range(n):
                want = {(qp, kp) for qp in zigzag(n, rank, c) for kp in range(S) if kp <= qp}
                for name, f in (('forward', forward_pairs), ('backward', backward_pairs)):
                    got, count = f(n, rank, c, bug)
                    if got != want or count != len(want):
                        return f'{name} cp{n} c{c} rank {rank}: {len(got - want)} extra, {len(want - got)} missing, {count - len(got)} repeated'
    return None


if __name__ == '__main__':
    failure = check()
    assert failure is None, failure
    for bug in ('lower sees all', 'higher from row 0', 'mask every slot-0 tile but the first'):
        assert check(bug) is not None, f'planted bug "{bug}" went unnoticed'
    print('ring slots: forward and backward decode give every causal pair once; 3 planted bugs caught')
