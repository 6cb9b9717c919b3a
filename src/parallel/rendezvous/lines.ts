// Newline-delimited JSON over a TCP socket: the rendezvous store's wire format (requests and
// replies are small; binary values travel as base64).
import type { Socket } from 'node:net';

/** Calls onMessage with each JSON value the socket delivers, one per line. */
export function onJsonLines(socket: Socket, onMessage: (msg: unknown) => void, onBadLine: (line: string) => void): void {
  let pending = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim() === '') continue;
      let msg: unknown;
      try { msg = JSON.parse(line); } catch { onBadLine(line); continue; }
      onMessage(msg);
    }
  });
}

export function writeJsonLine(socket: Socket, msg: unknown): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(msg)}\n`);
}

/** A request to the store; `id` pairs it with its reply. */
export type StoreRequest =
  | { id: number; op: 'hello'; rank: number; world: number }
  | { id: number; op: 'set'; key: string; value: string }
  | { id: number; op: 'get'; key: string }
  | { id: number; op: 'add'; key: string; delta: number };

export type StoreReply =
  | { id: number; ok: true; value?: string; count?: number }
  | { id: number; ok: false; error: string };
