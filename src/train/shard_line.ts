// The start-up lines of a launched run: the mesh, and what each rank keeps of the sharded
// parameters (issue 13 item 7), e.g.
//   moetrain: mesh pp1·dp2·cp1·ep1 (2 ranks; 2 replicas read different sequences): dense parameters sharded over 2 ranks, routed experts over 2
//   moetrain: per rank 0.12M parameters held: persistent 2.25 MB (weights 0.75 MB, gradients 0.50 MB, optimizer state 1.00 MB) = 18.00 bytes per held element (bf16 compute; 1.2% padding); a unit's gathered weights and gradient take at most 0.31 MB while it runs
import type { Mesh } from '../parallel/mesh.js';
import type { MeshGroups } from '../parallel/init_distributed.js';
import type { ShardBytes } from '../parallel/fsdp.js';

const mb = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MB`;

export function formatShardLines(mesh: Mesh, groups: MeshGroups, b: ShardBytes, precision: string): string[] {
  const persistent = b.weights + b.gradients + b.optimizer;
  const padding = b.heldElements > 0 ? (1 - b.parameterElements / b.heldElements) * 100 : 0;
  return [
    `moetrain: mesh ${mesh.name} (${mesh.world} ranks; ${groups.data.size} replicas read different sequences): dense parameters sharded over ${groups.denseShard.size} ranks, routed experts over ${groups.expertShard.size}`,
    `moetrain: per rank ${(b.parameterElements / 1e6).toFixed(2)}M parameters held: persistent ${mb(persistent)} (weights ${mb(b.weights)}, gradients ${mb(b.gradients)}, optimizer state ${mb(b.optimizer)}) = ${(persistent / b.heldElements).toFixed(2)} bytes per held element (${precision} compute; ${padding.toFixed(1)}% padding); a unit's gathered weights and gradient take at most ${mb(b.largestUnitTransient)} while it runs` +
      (b.heldOverStep > 0 ? `; held over each step (parallel.hold_weights / hold_grads): ${mb(b.heldOverStep)}` : ''),
  ];
}
