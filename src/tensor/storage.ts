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
//
// A storage may also be recomputable (setRebuild): once the only views left are the ones
// autograd saved for backward (savedRefs), its memory goes back to the owner at once, and
// rematerialize() — called by autograd before a rule that saved it runs — takes fresh memory and
// computes the contents again from tensors the rebuild holds (autograd/recompute.ts). Activations
// that are cheap to recompute (a SwiGLU output, gathered rows) then cost no memory between their
// layer's forward and its backward.

/** Opaque handle to a block of backend memory. */
export interface DeviceBuffer { readonly bytes: number }

/** What Storage and Tensor need of the backend that holds their memory. */
export interface StorageOwner {
  /** Which backend, for messages ('cpu', 'cuda'). */
  readonly kind: string;
  alloc(bytes: number): DeviceBuffer;
  free(buffer: DeviceBuffer): void;
}

/** How a recomputable storage's contents are computed again (autograd/recompute.ts). */
export interface Rebuild {
  /** Writes the contents into the storage (resident again when this runs). */
  run(storage: Storage): void;
  /** Lets go of what run reads; called once, after run or when the storage is released unrun. */
  release(): void;
}

/** A block of backend memory shared by every view onto it (reference-counted). */
export class Storage {
  refs = 1;
  /** Of refs, the views autograd saved for backward (GradNode.save). */
  savedRefs = 0;
  private held: DeviceBuffer | null;
  private rebuild: Rebuild | null = null;

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
    if (--this.refs === 0) {
      if (this.held !== null) this.owner.free(this.held);
      this.held = null;
      const r = this.rebuild;
      this.rebuild = null;
      r?.release();
    } else if (this.rebuild && this.held !== null && this.refs === this.savedRefs) {
      // Only backward's saved views are left: the memory can wait for rematerialize().
      this.owner.free(this.held);
      this.held = null;
    }
  }

  /** Makes the contents recomputable (see the file header); the storage takes ownership of r. */
  setRebuild(r: Rebuild): void {
    if (this.rebuild) throw new Error('internal: a storage has one rebuild');
    this.rebuild = r;
  }

  /** Whether the memory was given back for a later rematerialize(). */
  get awaitsRebuild(): boolean { return this.held === null && this.rebuild !== null; }

  /** Fresh memory and the contents computed again; the storage then stays until released. */
  rematerialize(): void {
    const r = this.rebuild;
    if (!r || this.held !== null) throw new Error('internal: rematerialize of a storage that is resident or has no rebuild');
    this.rebuild = null;
    this.held = this.owner.alloc(this.bytes);
    r.run(this);
    r.release();
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
