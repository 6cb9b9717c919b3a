// The CPU communicator's sockets (run on its worker thread): one TCP connection to every other
// rank of the world on this machine, carrying framed messages. A frame is a 16-byte header
// (kind, channel, payload length as two u32, little-endian) and the payload. Each (peer,
// channel) pair is a FIFO: the k-th message a rank sends to a peer on a channel is the k-th the
// peer receives there, so a group's collectives match up as long as its ranks call them in the
// same order. Messages that arrive before anyone asks for them wait in the inbox, so reads and
// writes never block each other (no deadlock at any message size).
import net from 'node:net';

const HEADER_BYTES = 16;
const KIND_HELLO = 1;
const KIND_DATA = 2;
const KIND_BYE = 3;

type PeerState = 'up' | 'bye' | 'lost';

/** The lost-peer error names the peer this way; the launcher follows it to the rank that failed first. */
export const LOST_PEER = /lost the connection to rank (\d+) /;
interface Waiter { resolve: (m: Uint8Array) => void; reject: (e: Error) => void }
interface Mailbox { queue: Uint8Array[]; waiters: Waiter[] }

/** Splits a byte stream into frames. */
class FrameReader {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  private payload: Uint8Array | null = null;
  private payloadFill = 0;
  private kind = 0;
  private channel = 0;

  constructor(private readonly onFrame: (kind: number, channel: number, payload: Uint8Array) => void) {}

  feed(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.payload === null) {
        const n = Math.min(HEADER_BYTES - this.headerFill, chunk.length - at);
        chunk.copy(this.header, this.headerFill, at, at + n);
        this.headerFill += n;
        at += n;
        if (this.headerFill < HEADER_BYTES) return;
        this.kind = this.header.readUInt32LE(0);
        this.channel = this.header.readUInt32LE(4);
        const length = this.header.readUInt32LE(8) + this.header.readUInt32LE(12) * 2 ** 32;
        // Not pooled, so the payload starts at offset 0 of its own buffer (aligned typed views).
        this.payload = length === 0 ? new Uint8Array(0) : Buffer.allocUnsafeSlow(length);
        this.payloadFill = 0;
      } else {
        const n = Math.min(this.payload.length - this.payloadFill, chunk.length - at);
        this.payload.set(chunk.subarray(at, at + n), this.payloadFill);
        this.payloadFill += n;
        at += n;
      }
      if (this.payload !== null && this.payloadFill === this.payload.length) {
        const p = this.payload;
        this.payload = null;
        this.headerFill = 0;
        this.onFrame(this.kind, this.channel, p);
      }
    }
  }
}

function header(kind: number, channel: number, length: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeUInt32LE(kind, 0);
  h.writeUInt32LE(channel >>> 0, 4);
  h.writeUInt32LE(length % 2 ** 32, 8);
  h.writeUInt32LE(Math.floor(length / 2 ** 32), 12);
  return h;
}

export class PeerLinks {
  private readonly sockets = new Map<number, net.Socket>();
  private readonly state = new Map<number, PeerState>();
  private readonly boxes = new Map<string, Mailbox>();
  private server: net.Server | null = null;
  private onAllConnected: (() => void) | null = null;

  constructor(readonly rank: number, readonly world: number) {}

  /** Starts listening on a free loopback port and returns it. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = net.createServer((socket) => this.accept(socket));
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
      this.server = server;
    });
  }

  /** Dials every lower rank and waits for every higher rank to dial in. */
  connect(ports: readonly number[], timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const missing = [...Array(this.world).keys()].filter((r) => r !== this.rank && !this.sockets.has(r));
        reject(new Error(`rank ${this.rank}: ranks ${missing.join(', ')} did not connect to the CPU communicator within ${(timeoutMs / 1000).toFixed(0)} s; check their output`));
      }, timeoutMs);
      this.onAllConnected = () => { clearTimeout(timer); resolve(); };
      for (let r = 0; r < this.rank; r++) {
        const socket = net.connect({ host: '127.0.0.1', port: ports[r]! });
        socket.once('error', (e: NodeJS.ErrnoException) => { clearTimeout(timer); reject(new Error(`rank ${this.rank} could not connect to rank ${r} at 127.0.0.1:${ports[r]} (${e.code ?? e.message})`)); });
        socket.once('connect', () => {
          socket.removeAllListeners('error');
          socket.write(header(KIND_HELLO, this.rank, 0));
          this.attach(r, socket, new FrameReader((kind, channel, payload) => this.onFrame(r, kind, channel, payload)));
        });
      }
      this.checkConnected();
    });
  }

  private accept(socket: net.Socket): void {
    // The first frame names the dialling rank; its frames go to that rank's mailboxes.
    let peer = -1;
    const reader = new FrameReader((kind, channel, payload) => {
      if (peer >= 0) { this.onFrame(peer, kind, channel, payload); return; }
      if (kind !== KIND_HELLO || channel <= this.rank || channel >= this.world || this.sockets.has(channel)) { socket.destroy(); return; }
      peer = channel;
      this.attach(peer, socket, null);
    });
    socket.on('data', (chunk: Buffer) => reader.feed(chunk));
    socket.on('error', () => socket.destroy());
  }

  private attach(peer: number, socket: net.Socket, reader: FrameReader | null): void {
    socket.setNoDelay(true);
    this.sockets.set(peer, socket);
    this.state.set(peer, 'up');
    if (reader) socket.on('data', (chunk: Buffer) => reader.feed(chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => { if (this.state.get(peer) === 'up') this.peerDown(peer, 'lost'); });
    this.checkConnected();
  }

  private checkConnected(): void {
    if (this.onAllConnected && this.sockets.size === this.world - 1) {
      const done = this.onAllConnected;
      this.onAllConnected = null;
      done();
    }
  }

  private box(peer: number, channel: number): Mailbox {
    const key = `${peer}/${channel}`;
    let b = this.boxes.get(key);
    if (!b) { b = { queue: [], waiters: [] }; this.boxes.set(key, b); }
    return b;
  }

  private onFrame(peer: number, kind: number, channel: number, payload: Uint8Array): void {
    if (kind === KIND_BYE) { this.peerDown(peer, 'bye'); return; }
    if (kind !== KIND_DATA) return;
    const b = this.box(peer, channel);
    const w = b.waiters.shift();
    if (w) w.resolve(payload);
    else b.queue.push(payload);
  }

  private downMessage(peer: number): string {
    return this.state.get(peer) === 'bye'
      ? `rank ${peer} closed its communicator while this rank still waited for it (the ranks ran different sequences of collectives)`
      : `lost the connection to rank ${peer} (its process exited or was killed; its own output says why)`;
  }

  private peerDown(peer: number, how: 'bye' | 'lost'): void {
    this.state.set(peer, how);
    const prefix = `${peer}/`;
    for (const [key, b] of this.boxes) {
      if (!key.startsWith(prefix)) continue;
      for (const w of b.waiters.splice(0)) w.reject(new Error(this.downMessage(peer)));
    }
  }

  /** Resolves once the payload has been handed to the system (the caller may then reuse it). */
  send(peer: number, channel: number, payload: Uint8Array): Promise<void> {
    const socket = this.sockets.get(peer);
    if (!socket || this.state.get(peer) !== 'up') return Promise.reject(new Error(this.downMessage(peer)));
    return new Promise((resolve, reject) => {
      const done = (e?: Error | null): void => (e ? reject(new Error(this.downMessage(peer))) : resolve());
      socket.cork();
      if (payload.length === 0) {
        socket.write(header(KIND_DATA, channel, 0), done);
      } else {
        socket.write(header(KIND_DATA, channel, payload.length));
        socket.write(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), done);
      }
      socket.uncork();
    });
  }

  /** The next message from peer on channel (one already arrived, or the next to arrive). */
  recv(peer: number, channel: number): Promise<Uint8Array> {
    const b = this.box(peer, channel);
    const m = b.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.state.get(peer) !== 'up') return Promise.reject(new Error(this.downMessage(peer)));
    return new Promise((resolve, reject) => b.waiters.push({ resolve, reject }));
  }

  /** Says goodbye to every peer and closes the sockets after what was written has gone out. */
  close(): void {
    for (const [peer, socket] of this.sockets) {
      if (this.state.get(peer) === 'up') socket.end(header(KIND_BYE, 0, 0));
      this.state.set(peer, 'bye');
    }
    this.server?.close();
  }
}
