"""Ring backward in one launch: a schedule model of why cp = 4 runs below the whole kernel.

python3 bench/attention_ring_bwd_sched_model.py     (no GPU; a second)

The Hopper backward (kernels/mla_attention_bwd_hopper.cu) runs one CTA per (head, 128-key tile,
batch) item, dispatched in grid order (head fastest, then key tile, then batch) onto 132 SMs as
they free up. Model an item as `a + b·steps`: b per 64-query step, a per item (its K/V load, the
pipeline filling, the last step's dQ without overlap, the dK/dV/dk_pe epilogue). A whole causal
sequence of s has s/128 key tiles per head of s/64 − 2y steps; a rank's ring launch at cp has
the causal slot 0 of its 2c tokens plus, per later slot, c/128 tiles of 2c/64 steps (a lower
rank's slot) or 2c/128 tiles of c/64 steps (a higher rank's), at batch cp for the issue's "same
total work" rows. The same work in shorter items costs cp·(more items)·a: cp = 4 at s = 4096 has
c = 512, items of 8–16 steps against the whole kernel's 2–64.

a and b are fitted (least squares over a grid) to what an H100 measured on 2026-12-07 (stop 27,
`moetrain bench attention --cp 2|4`): the whole kernel's backward TFLOP/s and the six one-launch
ring ratios. The model then says what the ring would give if a fraction of a were hidden (a
half, three quarters), against the whole kernel as it is and against one that hid as much.
A persistent backward (CTAs claiming items in this order, the next item's K/V and first Q/dO
stages overlapping the current one's end) was predicted from this to hide about half; measured
on an H100 (stop 29) it took 0.647 → 0.622 ms off the s = 4096 ring, about a sixth of a, and was
taken out again (bench/attention_notes.md, "stop 29").
"""
import heapq

SMS, HEADS, D_QK_V = 132, 16, 320
WHOLE_TFLOPS = {4096: 424, 8192: 470, 16384: 470}
RING_RATIO = {(4, 4096): 0.788, (4, 8192): 0.900, (4, 16384): 0.926, (2, 4096): 0.960, (2, 8192): 0.964, (2, 16384): 0.984}


def whole_items(s):
    """Steps of each key tile of one (head, batch) of the whole causal sequence."""
    return [s // 64 - 2 * y for y in range(s // 128)]


def ring_items(cp, rank, c):
    """Steps of each key tile of one (head, batch) of rank `rank`'s one-launch ring (slot order)."""
    items = [2 * c // 64 - 2 * y for y in range(2 * c // 128)]
    for j in range(1, cp):
        items += [2 * c // 64] * (c // 128) if (rank - j) % cp < rank else [c // 64] * (2 * c // 128)
    return items


def launch_us(items, batch, a, b):
    """Makespan of the launch: items in grid order, each to the SM that frees first."""
    free = [0.0] * SMS
    end = 0.0
    for steps in (st for _ in range(batch) for st in items for _ in range(HEADS)):
        t = heapq.heappop(free) + a + b * steps
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def ring_us(cp, s, a, b):
    c = s // (2 * cp)
    return max(launch_us(ring_items(cp, r, c), cp, a, b) for r in range(cp))


def misfit(a, b):
    err = 0.0
    for s, tf in WHOLE_TFLOPS.items():
        err += (2.5 * HEADS * s * s * D_QK_V / (launch_us(whole_items(s), 1, a, b) * 1e-6) / 1e12 / tf - 1) ** 2
    for (cp, s), ratio in RING_RATIO.items():
        err += (launch_us(whole_items(s), 1, a, b) / ring_us(cp, s, a, b) / ratio - 1) ** 2
    return err


def main():
    _, a, b = min((misfit(a, b), a, b) for a in [0.5 * i for i in range(61)] for b in [2.9 + 0.02 * i for i in range(40)])
    print(f"fit: a = {a:.1f} µs an item, b = {b:.2f} µs a 64-query step ({a / b:.1f} steps' worth an item)")
    for (cp, s), ratio in RING_RATIO.items():
        whole = launch_us(whole_items(s), 1, a, b)
        cells = []
        for hidden in (0.5, 0.75):
            ap = a * (1 - hidden)
            ring_p = ring_us(cp, s, ap, b)
            cells.append(f"{hidden:.0%} of a hidden: {whole / ring_p:.3f} (whole per tile), {launch_us(whole_items(s), 1, ap, b) / ring_p:.3f} (whole hiding as much)")
        print(f"cp{cp} s={s}: measured {ratio:.3f}, model {whole / ring_us(cp, s, a, b):.3f}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
