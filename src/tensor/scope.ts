// Scopes: every tensor created while a scope is open is released when the scope closes, except
// the ones the scope function returns and the ones passed to keep(). The training step runs in
// a scope; parameters, gradients and optimizer state are created outside any scope (or kept).
import type { Tensor } from './tensor.js';

/** What a scope must release: its tensors, and autograd nodes (their saved tensors). */
export interface Releasable {
  release(): void;
  /** The nodes this one's inputs came from (reachability from returned tensors). */
  parents(): Iterable<Releasable>;
}

interface Scope { tensors: Set<Tensor>; nodes: Set<Releasable> }

const stack: Scope[] = [];

export function trackInScope(t: Tensor): void {
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
export function keep<T extends Tensor>(t: T): T {
  for (const s of stack) s.tensors.delete(t);
  return t;
}

type Returned = Tensor | readonly Returned[] | { readonly [k: string]: Returned } | ArrayBufferView | number | string | boolean | void | null | undefined;

function collect(v: unknown, out: Set<Tensor>): void {
  if (v === null || v === undefined || typeof v !== 'object' || ArrayBuffer.isView(v)) return;
  if ((v as Tensor).storage !== undefined && (v as Tensor).shape !== undefined) { out.add(v as Tensor); return; }
  if (Array.isArray(v)) { for (const x of v) collect(x, out); return; }
  for (const x of Object.values(v as Record<string, unknown>)) collect(x, out);
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
  const returned = new Set<Tensor>();
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
