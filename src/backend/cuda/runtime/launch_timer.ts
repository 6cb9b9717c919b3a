// Device time per launch, for `bench train --kernels`: while a timer is installed, every kernel
// (CudaKernel.launch) and every cuBLASLt product (ops/matmul.ts) is bracketed by two events on
// its stream, and `collect` adds up the elapsed times by name. The section profile
// (bench/train_profile.ts) says which part of the model the time goes to; this says which
// kernel, without synchronising between launches. An event pair costs a few microseconds of
// host time per launch, so the step it measures runs a little slower than an untimed one; the
// device times themselves are what the kernels took.
import type { CudaDriver } from '../ffi/driver.js';

/** Milliseconds and launches per name. */
export type LaunchTimes = Map<string, { ms: number; count: number }>;

export class LaunchTimer {
  /** Events made so far, reused from one collect to the next. */
  private readonly events: bigint[] = [];
  /** Names of the launches bracketed since the last collect, in order (launch i: events 2i, 2i+1). */
  private readonly names: string[] = [];

  constructor(private readonly driver: CudaDriver) {}

  /**
   * The part of the step being launched (bench train --kernels sets it from the model's sections
   * and the step's phases); launches are reported as "part: name", or under their name alone when it is null.
   */
  part: string | null = null;

  /** Queues `fn`'s work on `stream` between two events, under `name` (and the current part). */
  around<T>(name: string, stream: bigint, fn: () => T): T {
    const i = this.names.length;
    this.names.push(this.part === null ? name : `${this.part}: ${name}`);
    this.driver.eventRecord(this.event(2 * i), stream);
    const r = fn();
    this.driver.eventRecord(this.event(2 * i + 1), stream);
    return r;
  }

  /** Waits for the bracketed work and returns its time by name; the next collect starts from zero. */
  collect(): LaunchTimes {
    const out: LaunchTimes = new Map();
    for (let i = 0; i < this.names.length; i++) {
      const end = this.events[2 * i + 1]!;
      this.driver.eventSynchronize(end);
      const ms = this.driver.eventElapsedMs(this.events[2 * i]!, end);
      const row = out.get(this.names[i]!) ?? { ms: 0, count: 0 };
      row.ms += ms;
      row.count++;
      out.set(this.names[i]!, row);
    }
    this.names.length = 0;
    return out;
  }

  dispose(): void {
    for (const e of this.events) this.driver.eventDestroy(e);
    this.events.length = 0;
    this.names.length = 0;
  }

  private event(i: number): bigint {
    while (this.events.length <= i) this.events.push(this.driver.eventCreate(0));
    return this.events[i]!;
  }
}

/** The timer launches report to; null (the default) times nothing. */
export const launchTiming: { timer: LaunchTimer | null } = { timer: null };
