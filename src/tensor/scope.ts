// Scopes: every tensor created while a scope is open is released when the scope closes, except
// the ones the scope function returns and the ones passed to keep(). The training step runs in
// a scope; parameters, gradients and optimizer state are created outside any scope (or kept).
// This file sits below tensor.ts (which registers each new tensor here), so it names tensors and
// autograd nodes by the two small interfaces below; Tensor and autograd's GradNode implement them.

/** What a scope must release: its tensors, and autograd nodes (their saved tensors). */
export interface Releasable {
  release(): void;
  /** The nodes this one's inputs came from (reachability from returned tensors). */
  parents(): Iterable<Releasable>;
}

/** What a scope needs of a tensor: a way to dispose it, and the autograd node that produced it. */
export interface ScopedTensor {
  readonly gradLink: { readonly node: Releasable } | null;
  dispose(): void;
}

interface Scope { tensors: Set<ScopedTensor>; nodes: Set<Releasable> }

const stack: Scope[] = [];

export function trackInScope(t: ScopedTensor): void {
  const top = stack[stack.length - 1];
  if (top) top.tensors.add(t);
}

/**
 * Autograd nodes created in a scope are released with it unless a returned tensor still
 * needs them for backward; so a forward that throws, or is never back-propagated, leaks nothing.
 */
export function trackNodeInScope(n: Releasable): void {
  const top = stack[stack.length - 1];
  if (top) top.nodes.add(n);
}

/** Removes t from every open scope, so that it outlives them; the caller then owns it. */
export function keep<T extends ScopedTensor>(t: T): T {
  for (const s of stack) s.tensors.delete(t);
  return t;
}

type Returned = ScopedTensor | readonly Returned[] | { readonly [k: string]: Returned } | ArrayBufferView | number | string | boolean | void | null | undefined;

/** Whether a value inside a scope's result is a tensor: Tensor is the one type with both members. */
function isScopedTensor(v: object): v is ScopedTensor {
  return 'gradLink' in v && 'dispose' in v && typeof v.dispose === 'function';
}

function collect(v: unknown, out: Set<ScopedTensor>): void {
  if (v === null || v === undefined || typeof v !== 'object' || ArrayBuffer.isView(v)) return;
  if (isScopedTensor(v)) { out.add(v); return; }
  if (Array.isArray(v)) { for (const x of v) collect(x, out); return; }
  for (const x of Object.values(v)) collect(x, out);
}

/** Runs fn; disposes the tensors it created except those it returns (which move to the outer scope). */
export function tidy<T extends Returned>(fn: () => T): T {
  const mine: Scope = { tensors: new Set(), nodes: new Set() };
  stack.push(mine);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    stack.pop();
    for (const n of mine.nodes) n.release();
    for (const t of mine.tensors) t.dispose();
    throw e;
  }
  stack.pop();
  const returned = new Set<ScopedTensor>();
  collect(result, returned);
  if (mine.nodes.size > 0) {
    // Nodes reachable from a returned tensor stay (they move to the outer scope); others go.
    const live = new Set<Releasable>();
    const todo: Releasable[] = [];
    for (const t of returned) if (t.gradLink) todo.push(t.gradLink.node);
    while (todo.length) {
      const n = todo.pop()!;
      if (live.has(n)) continue;
      live.add(n);
      for (const p of n.parents()) if (!live.has(p)) todo.push(p);
    }
    for (const n of mine.nodes) {
      if (live.has(n)) trackNodeInScope(n);
      else n.release();
    }
  }
  for (const t of mine.tensors) {
    if (returned.has(t)) trackInScope(t);
    else t.dispose();
  }
  return result;
}

export function scopeDepth(): number { return stack.length; }
