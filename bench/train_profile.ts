// bench train --profile: the step broken down by layer kind (models/section_hooks.ts), with the
// device synchronised around every timed piece.
// - Forward: each section's time from its start to its output being computed.
// - Backward: the section's input and output are passed through identity nodes ("markers")
//   whose backward rules synchronise and read the clock. Backward time between two markers is
//   charged to the section most recently opened (its output marker ran) and not yet closed
//   (its input marker ran), or to "other" when none is open. Autograd may interleave a
//   neighbouring branch (the router's weights, the shared experts) with a section; that time is
//   charged to whichever section is open then.
// - "other": what no section covers (embedding, norms, residual adds, the host's work between).
// The markers are extra autograd nodes: the forward is unchanged, but they may change the order
// in which autograd adds two bf16 gradients of one tensor (a bf16 ulp on some elements).
import { beginNode, linkOutputs } from '../src/autograd/tape.js';
import type { Backend } from '../src/backend/backend.js';
import type { ModelSection, SectionHooks } from '../src/models/section_hooks.js';
import type { Tensor } from '../src/tensor/tensor.js';

export type ProfileKind = ModelSection | 'other';
export const PROFILE_KINDS: readonly ProfileKind[] = ['attention', 'mlp', 'router', 'experts', 'head', 'other'];

export type KindTimes = Record<ProfileKind, number>;

const zeroTimes = (): KindTimes => ({ attention: 0, mlp: 0, router: 0, experts: 0, head: 0, other: 0 });

export class SectionProfiler implements SectionHooks {
  /** Seconds per kind in this step, forward and backward (zeros when not timed). */
  forward = zeroTimes();
  backward = zeroTimes();
  /** Sections whose backward has started and not finished, most recent last. */
  private open: ModelSection[] = [];
  private lastEvent = 0;

  /**
   * timed: synchronise and read the clock around every section (--profile); without it the
   * sections only report, through `onKind`, which kind the launches from now on belong to
   * (--kernels alone, which must not add waits).
   */
  constructor(private readonly backend: Backend, private readonly opts: { timed: boolean; onKind?: (kind: ProfileKind) => void } = { timed: true }) {}

  section(kind: ModelSection, x: Tensor, fn: (x: Tensor) => Tensor): Tensor {
    this.sync();
    const t0 = performance.now();
    this.opts.onKind?.(kind);
    const y = this.marker(fn(this.marker(x, () => this.closeSection(kind))), () => this.openSection(kind));
    this.opts.onKind?.('other');
    this.sync();
    if (this.opts.timed) this.forward[kind] += (performance.now() - t0) / 1000;
    return y;
  }

  private sync(): void { if (this.opts.timed) this.backend.synchronize(); }

  /** Starts the backward clock (call with the device synchronised, before backward). */
  beginBackward(): void {
    this.open = [];
    this.lastEvent = performance.now();
  }

  /** Charges the time since the last marker (call after backward, synchronised). */
  endBackward(): void { this.charge(); }

  /** Sections whose backward has started and not finished (0 after a whole backward pass). */
  get openSections(): number { return this.open.length; }

  /** Clears the step's times. */
  reset(): void {
    this.forward = zeroTimes();
    this.backward = zeroTimes();
  }

  /** Seconds since the last event to the open section (or "other"); restarts the clock. */
  private charge(): void {
    if (!this.opts.timed) return;
    this.backend.synchronize();
    const now = performance.now();
    this.backward[this.open[this.open.length - 1] ?? 'other'] += (now - this.lastEvent) / 1000;
    this.lastEvent = now;
  }

  private openSection(kind: ModelSection): void {
    this.charge();
    this.open.push(kind);
    this.opts.onKind?.(kind);
  }

  private closeSection(kind: ModelSection): void {
    this.charge();
    const at = this.open.lastIndexOf(kind);
    if (at >= 0) this.open.splice(at, 1);
    this.opts.onKind?.(this.open[this.open.length - 1] ?? 'other');
  }

  /** An alias of t whose backward rule runs onBackward, then passes the gradient through; t itself when nothing records. */
  private marker(t: Tensor, onBackward: () => void): Tensor {
    const node = beginNode('profile marker', [t], 1);
    if (!node) return t;
    const out = t.view(t.shape, t.strides, t.offset);
    node.rule = ([g]) => {
      onBackward();
      return [g!.view(g!.shape, g!.strides, g!.offset)];
    };
    linkOutputs(node, [out]);
    return out;
  }
}
