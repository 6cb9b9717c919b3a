// Storage: a block of backend memory shared by every tensor view onto it, released when the
// last view lets go. tensor/ sits below backend/, so the owner of the memory is typed here by
// the little a storage and a tensor need of it; the Backend contract (backend/backend.ts)
// extends StorageOwner, and backendOf() there gives an op the full Backend of a tensor.

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
  constructor(readonly owner: StorageOwner, readonly buffer: DeviceBuffer, readonly bytes: number) {}
  retain(): void { this.refs++; }
  release(): void {
    if (this.refs <= 0) throw new Error('internal: storage released twice');
    if (--this.refs === 0) this.owner.free(this.buffer);
  }
}
