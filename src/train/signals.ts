// Stopping a run cleanly. On the first SIGINT (Ctrl-C) or SIGTERM the run finishes the step it is
// in, writes a checkpoint, prints where it is and how to resume, and exits with 130 or 143 (128 +
// the signal's number). JavaScript sees a signal only between steps, when the training loop
// lets the event loop turn (turnEventLoop); until then the signal waits.
//
// A second signal ends the process at once: after the first, this process stops listening, so
// the next one gets the operating system's default action (the process ends, and a checkpoint
// being written stays a .tmp folder that nothing takes for complete). Under a launcher the
// terminal's Ctrl-C reaches the ranks both directly and forwarded by the launcher, so a rank
// keeps ignoring repeats there, and ending the ranks at once is the launcher's to do.
export type StopSignal = 'SIGINT' | 'SIGTERM';

/** The exit status of a run stopped by each signal (what a shell reports for it). */
export const STOP_EXIT_CODE: Readonly<Record<StopSignal, number>> = { SIGINT: 130, SIGTERM: 143 };

export interface StopListener {
  /** The first stop signal received, or null. */
  readonly signal: StopSignal | null;
  /** Stops listening (the default actions return). */
  close(): void;
}

export interface ListenOptions {
  /** Ranks started by `moetrain launch` (or any launcher that forwards signals). */
  launched: boolean;
  /** Receives the line printed when the first signal arrives. */
  log: (line: string) => void;
}

export function listenForStop(opts: ListenOptions): StopListener {
  let signal: StopSignal | null = null;
  const signals: StopSignal[] = ['SIGINT', 'SIGTERM'];
  const stopListening = (): void => { for (const s of signals) process.off(s, onSignal); };
  function onSignal(s: StopSignal): void {
    if (signal !== null) return;
    signal = s;
    if (!opts.launched) stopListening();
    const again = opts.launched ? '' : ` (${s === 'SIGINT' ? 'Ctrl-C' : 'a second signal'} again quits at once, without it)`;
    opts.log(`moetrain: ${s} received: stopping after the current step, with a checkpoint${again}`);
  }
  for (const s of signals) process.on(s, onSignal);
  return {
    get signal() { return signal; },
    close: stopListening,
  };
}

/** Lets pending signal handlers run (between steps). */
export function turnEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
