// Storage: a block of backend memory shared by every tensor view onto it, released when the
// last view lets go. tensor/ sits below backend/, so the owner of the memory is typed here by
// the little a storage and a tensor need of it; the Backend contract (backend/backend.ts)
// extends StorageOwner, and backendOf() there gives an op the full Backend of a tensor.
//
// A storage may also be evicted: its memory goes back to the owner while its views stay, and
// restore() gives it fresh memory of the same size (contents unset). Sharded parameters use
// this: the gathered weights of a unit are freed after its forward although autograd still
// holds views of them, and gathered again before its backward. Using an evicted storage is an
// internal error (reading `buffer` throws).

/** Opaque handle to a block of backend memory. */
export interface DeviceBuffer { readonly bytes: number }

/** What Storage and Tensor need of the backend that holds their memory. */
export interface StorageOwner {
  /** Which backend, for messages ('cpu', 'cuda'). */
  readonly kind: string;
  alloc(bytes: number): DeviceBuffer;
  free(buffer: DeviceBuffer): void;
}

/** A block of backend memory shared by every view onto it (reference-counted). */
export class Storage {
  refs = 1;
  private held: DeviceBuffer | null;

  /** buffer null: an evicted storage (no memory until restore()). */
  constructor(readonly owner: StorageOwner, buffer: DeviceBuffer | null, readonly bytes: number) {
    this.held = buffer;
  }

  /** The memory; an internal error while evicted. */
  get buffer(): DeviceBuffer {
    if (this.held === null) throw new Error(`internal: a ${this.owner.kind} storage of ${this.bytes} bytes was used while evicted (sharded weights or gradients read outside their gather)`);
    return this.held;
  }

  /** Whether the storage holds memory now (false while evicted). */
  get resident(): boolean { return this.held !== null; }

  retain(): void { this.refs++; }

  release(): void {
    if (this.refs <= 0) throw new Error('internal: storage released twice');
    if (--this.refs === 0 && this.held !== null) {
      this.owner.free(this.held);
      this.held = null;
    }
  }

  /** Gives the memory back to the owner; views stay but may not be used until restore(). */
  evict(): void {
    if (this.held === null) throw new Error('internal: evict of a storage that is already evicted');
    this.owner.free(this.held);
    this.held = null;
  }

  /** Fresh memory of the same size (contents unset) for an evicted storage. */
  restore(): void {
    if (this.held !== null) throw new Error('internal: restore of a storage that holds memory');
    if (this.refs <= 0) throw new Error('internal: restore of a released storage');
    this.held = this.owner.alloc(this.bytes);
  }
}
