// Scopes: every tensor created while a scope is open is released when the scope closes, except
// the ones the scope function returns and the ones passed to keep(). The training step runs in
// a scope; parameters, gradients and optimizer state are created outside any scope (or kept).
import type { Tensor } from './tensor.js';

const stack: Set<Tensor>[] = [];

export function trackInScope(t: Tensor): void {
  const top = stack[stack.length - 1];
  if (top) top.add(t);
}

/** Removes t from every open scope, so that it outlives them; the caller then owns it. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of stack) s.delete(t);
  return t;
}

type Returned = Tensor | readonly Returned[] | { readonly [k: string]: Returned } | number | void | null | undefined;

function collect(v: unknown, out: Set<Tensor>): void {
  if (v === null || v === undefined || typeof v !== 'object') return;
  if ((v as Tensor).storage !== undefined && (v as Tensor).shape !== undefined) { out.add(v as Tensor); return; }
  if (Array.isArray(v)) { for (const x of v) collect(x, out); return; }
  for (const x of Object.values(v as Record<string, unknown>)) collect(x, out);
}

/** Runs fn; disposes the tensors it created except those it returns (which move to the outer scope). */
export function tidy<T extends Returned>(fn: () => T): T {
  const mine = new Set<Tensor>();
  stack.push(mine);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    stack.pop();
    for (const t of mine) t.dispose();
    throw e;
  }
  stack.pop();
  const returned = new Set<Tensor>();
  collect(result, returned);
  for (const t of mine) {
    if (returned.has(t)) trackInScope(t);
    else t.dispose();
  }
  return result;
}

export function scopeDepth(): number { return stack.length; }
