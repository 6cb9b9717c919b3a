"""What the protocol models (bench/*_protocol_model.py) print: a clean run's failures, a planted bug's catches.

Each model replays a kernel's producer/consumer protocol on random interleavings (trial(...)
returns an error string or None). A clean protocol must fail no schedule; each planted mutation
must fail at least one, or the model could not have caught it.
"""


def clean(label, runs):
    """runs: (error or None, case) pairs of the unmutated protocol. Prints the count; True if none failed."""
    total, failures = 0, []
    for err, case in runs:
        total += 1
        if err:
            failures.append((case, err))
    print(f"{label}: {total} schedules: {'OK' if not failures else f'{len(failures)} FAILED'}")
    for f in failures[:5]:
        print("   ", f)
    return not failures


def catches(label, mut, runs):
    """runs: (error or None, case) pairs of one planted mutation. Prints how many failed; True if any."""
    caught, total, example = 0, 0, None
    for err, case in runs:
        total += 1
        if err:
            caught += 1
            example = example or f"{case}: {err}"
    print(f"{label}{mut:24s}: fails {caught}/{total} schedules{'' if caught else '  <-- NOT CAUGHT'}"
          + (f"  e.g. {example}" if example else ""))
    return caught > 0
