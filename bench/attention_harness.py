#!/usr/bin/env python3
"""Develops and checks the MLA attention CUDA kernels without the TypeScript side: builds
src/backend/cuda/kernels/mla_attention_{fwd,bwd}.cu with nvcc, loads the cubins with CuPy,
launches them on PyTorch tensors, compares against a float64 PyTorch reference (explicit
softmax(Q·Kᵀ·scale + mask)·V, autograd for the gradients) on awkward shapes, and times them next
to cuDNN (bench/attention_peer.py).

Run on a GPU machine from the repository root, after `npx tsc -p tsconfig.json` (the kernels'
-D defines are read from the built launcher, dist/src/backend/cuda/ops/mla_attention.js, with node):
  PYTHONUNBUFFERED=1 python3 bench/attention_harness.py --out /tmp/attn [--no-bench] [--seqs ...]
  ... --hopper-bwd: the Hopper backward (mla_attention_bwd_hopper.cu) only: its checks on B=2,
  H∈{3,16}, S∈{1,17,129,300,1000,2048} (fast and deterministic-dkdv modes), then its timing next
  to the mma.sync backward and cuDNN. --clock-probe: SM clock and power while ours and cuDNN's
  backward run. --reduce-probe: the card's f32 bulk reduce-add throughput (bench/tma_reduce_probe.cu).

Error measure: ‖ours − ref‖ / ‖ref‖ over the whole tensor (rel) and max|ours − ref| / max|ref|
(maxrel). bf16 inputs are exact in both; what differs is bf16 rounding of P and dS before their
products (unit roundoff 2⁻⁸ ≈ 3.9e-3, averaging down over the sums) and of the outputs, so rel
should sit near 2e-3..6e-3; the bounds are 1e-2 (o) and 2e-2 (gradients, two rounded
products deep). lse is f32 from exact scores: bound 1e-4 relative.
"""
import argparse
import concurrent.futures
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_peer import (D_NOPE, D_ROPE, D_V, attention_flops, cudnn_inputs, cudnn_sdpa,  # noqa: E402
                            sets_to_rotate, time_cudnn, time_ms)

import cupy  # noqa: E402  (after torch: both then share the primary context)
import tma_launch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(REPO, "src", "backend", "cuda", "kernels")


def launcher_defines():
    """The -D defines src/backend/cuda/ops/mla_attention.ts compiles each kernel file with, read
    from its build (dist/) so that no number is repeated here: {"common", "fwd", "bwd",
    "fwd_hopper", "bwd_hopper": {name: value}}."""
    launcher = pathlib.Path(REPO, "dist", "src", "backend", "cuda", "ops", "mla_attention.js")
    if not launcher.exists():
        raise SystemExit(f"{launcher} not found: build the TypeScript first (npx tsc -p tsconfig.json)")
    script = (f"const m = await import({json.dumps(launcher.as_uri())}); console.log(JSON.stringify({{common: "
              "m.MLA_COMMON_DEFINES, fwd: m.MLA_FWD_DEFINES, bwd: m.MLA_BWD_DEFINES, fwd_hopper: m.MLA_HOP_FWD_DEFINES, "
              "bwd_hopper: m.MLA_HOP_BWD_DEFINES}))")
    try:
        r = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, cwd=REPO)
    except FileNotFoundError:
        raise SystemExit("node not found: the kernels' defines come from the built launcher (on the GPU machines, "
                         "source the devicekit's setup.sh)")
    if r.returncode != 0:
        raise SystemExit(f"reading the launcher's defines failed:\n{r.stderr}")
    return json.loads(r.stdout)


def define_flags(defines):
    """-DNAME=value options, sorted by name (as the launcher passes them to NVRTC)."""
    return [f"-D{k}={defines[k]}" for k in sorted(defines)]


DEFINES = launcher_defines()
TILE = DEFINES["common"]["MLA_TILE"]
BWD_THREADS, PRE_THREADS, FINISH_THREADS = (DEFINES["bwd"][k] for k in ("MLA_BWD_THREADS", "MLA_BWD_PRE_THREADS",
                                                                        "MLA_BWD_FINISH_THREADS"))
DKDV_SMEM, DQ_SMEM = DEFINES["bwd"]["MLA_BWD_DKDV_SMEM"], DEFINES["bwd"]["MLA_BWD_DQ_SMEM"]
FWD_THREADS = DEFINES["fwd"]["MLA_FWD_THREADS"]
D_QK = D_NOPE + D_ROPE


# Forward variants built side by side: (m-tiles per warp, key-tile rows, lazy rescale). The
# first is the one the TypeScript host runs (its MLA_FWD_DEFINES).
FWD_VARIANTS = {"mt2_bn32": (DEFINES["fwd"]["MLA_FWD_MT"], DEFINES["fwd"]["MLA_FWD_BN"], DEFINES["fwd"]["MLA_FWD_LAZY_RESCALE"]),
                "mt2_bn32_eager": (2, 32, 0), "mt1_bn64": (1, 64, 0)}
# The Hopper forward (mla_attention_fwd_hopper.cu, wgmma): 128 query rows per work item, 384
# threads (producer + 2 consumer warpgroups), a 1-D grid of min(items, SMs) persistent CTAs over
# the H·tiles·B items; after the launcher's arguments B, the work counter and its value at the
# launch's start (never reset: a launch with fewer CTAs than items adds its item count, as
# ops/mla_attention.ts keeps it); the sizes are the launcher's.
HOPPER = "hopper"
HOPPER_VARIANTS = {HOPPER: [], "hopper_simple": ["-DMLA_HOP_PINGPONG=0"],  # the first is the default
                   # Profiling builds (timing only, wrong results; not checked): without the softmax
                   # arithmetic, without waiting on device memory, and with neither (MMA + barriers).
                   "prof_nosoftmax": ["-DMLA_HOP_PROFILE_NO_SOFTMAX=1"], "prof_noloads": ["-DMLA_HOP_PROFILE_NO_LOADS=1"],
                   "prof_mmaonly": ["-DMLA_HOP_PROFILE_NO_SOFTMAX=1", "-DMLA_HOP_PROFILE_NO_LOADS=1"]}
HOPPER_SMEM, HOPPER_THREADS, HOPPER_ROWS, HOPPER_KEYS = (DEFINES["fwd_hopper"][k] for k in (
    "MLA_HOP_FWD_SMEM", "MLA_HOP_FWD_THREADS", "MLA_HOP_FWD_ROWS", "MLA_HOP_FWD_KEYS"))
# The Hopper backward (mla_attention_bwd_hopper.cu): replaces mla_attention_bwd_dkdv, same
# arguments but TMA tensor maps in place of the six input pointers (q/dO boxes of 64 query
# rows, k/v of 128 keys); grid (H, ceil(S/128), B), 384 threads; the sizes are the launcher's.
HOPPER_BWD_SMEM, HOPPER_BWD_THREADS, HOPPER_BWD_KEYS, HOPPER_BWD_QUERIES, HOPPER_BWD_DQ_ROWS = (DEFINES["bwd_hopper"][k] for k in (
    "MLA_HOP_BWD_SMEM", "MLA_HOP_BWD_THREADS", "MLA_HOP_BWD_KEYS", "MLA_HOP_BWD_QUERIES", "MLA_HOP_BWD_DQ_ROWS"))


# Profiling builds of the Hopper backward (timing only, wrong results): without the exp2 of P,
# without waiting on device memory after the first two query steps, without staging dQ (its
# GEMMs still run). A build without the prof_ prefix would be a correct alternative: it is
# checked against float64 and timed next to the default.
HOPPER_BWD_PROFILES = {"prof_nosoftmax": ["-DMLA_HB_PROFILE_NO_SOFTMAX=1"], "prof_noloads": ["-DMLA_HB_PROFILE_NO_LOADS=1"],
                       "prof_nostaging": ["-DMLA_HB_PROFILE_NO_STAGING=1"], "prof_clocks": ["-DMLA_HB_PROFILE_CLOCKS=1"],
                       "prof_clocks_nostaging": ["-DMLA_HB_PROFILE_CLOCKS=1", "-DMLA_HB_PROFILE_NO_STAGING=1"]}
# Phases of the prof_clocks build's hb_clocks[SM][role][16] (HbPhase in the .cu; role 0 the
# producer: waiting on empty, then issuing and loading lse/D).
HB_PHASES = ["wait full", "Sᵀ GEMM", "softmax", "dPᵀ GEMM", "dS + stores", "dV/dK GEMM", "wait dSᵀ full", "dQ step",
             None, "wait dSᵀ read"]
HB_DQ_PHASES = {10: "GEMM issue + wait", 11: "staging"}  # parts of "dQ step"
HB_STEPS = 8  # the phase slot of the producer row that counts the consumers' steps
HB_CLOCK_SLOTS = 144 * 3 * 16  # hb_clocks' size in the .cu


def fwd_rows(mt):
    """Query rows per block of the mma.sync forward: its warps × 16 × m-tiles per warp."""
    return FWD_THREADS // 32 * 16 * mt


def fwd_smem(mt, bn):
    """The mma.sync forward's shared memory (its layout; the kernel static_asserts MLA_FWD_SMEM against it)."""
    return (fwd_rows(mt) * (D_QK + 8) + 2 * bn * (D_QK + 8) + 2 * bn * (D_V + 8)) * 2


def fwd_defines(mt, bn, lazy):
    """The -D options of one mma.sync forward variant: the launcher's, with its shape replaced."""
    return define_flags({**DEFINES["fwd"], "MLA_FWD_MT": mt, "MLA_FWD_BN": bn, "MLA_FWD_LAZY_RESCALE": lazy,
                         "MLA_FWD_SMEM": fwd_smem(mt, bn)})


def build(out_dir, arch="sm_90a", fwd_only=False, hopper_variants=tuple(HOPPER_VARIANTS), hopper_bwd=False):
    """nvcc → cubins; returns {name: path} and writes the ptxas resource report. fwd_only: the
    default mma.sync forward and the chosen Hopper variants only (no backward). hopper_bwd: the
    default mma.sync forward, the chosen Hopper forward variants, both backwards."""
    paths, report = {}, []
    mma = list(FWD_VARIANTS)[:1] if fwd_only or hopper_bwd else list(FWD_VARIANTS)
    jobs = [(f"fwd_{v}", "fwd", fwd_defines(mt, bn, lazy)) for v, (mt, bn, lazy) in FWD_VARIANTS.items() if v in mma]
    jobs += [(f"fwd_{v}", "fwd_hopper", define_flags(DEFINES["fwd_hopper"]) + HOPPER_VARIANTS[v]) for v in hopper_variants]
    if not fwd_only:
        jobs.append(("bwd", "bwd", define_flags(DEFINES["bwd"])))
    if hopper_bwd:
        jobs.append(("bwd_hopper", "bwd_hopper", define_flags(DEFINES["bwd_hopper"])))
        jobs += [(f"bwd_hopper_{v}", "bwd_hopper", define_flags(DEFINES["bwd_hopper"]) + d) for v, d in HOPPER_BWD_PROFILES.items()]
    def nvcc(job):
        name, src_name, defines = job
        src = os.path.join(KERNELS, f"mla_attention_{src_name}.cu")
        cubin = os.path.join(out_dir, f"mla_attention_{name}.cubin")
        cmd = ["nvcc", "-std=c++17", "-cubin", f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xptxas", "-v",
               "-I", KERNELS, *defines, "-o", cubin, src]
        return src, cubin, subprocess.run(cmd, capture_output=True, text=True)

    # The builds run side by side (device time is the scarce thing; the GPU machine has 16 cores).
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        for (name, _, defines), (src, cubin, r) in zip(jobs, pool.map(nvcc, jobs)):
            report.append(f"== {name} {' '.join(defines)}\n" + r.stdout + r.stderr)
            if r.returncode != 0:
                print(r.stdout + r.stderr)
                raise SystemExit(f"nvcc failed for {src}")
            paths[name] = cubin
    text = "\n".join(report)
    with open(os.path.join(out_dir, "ptxas.txt"), "w") as f:
        f.write(text)
    for line in text.splitlines():
        if line.startswith("==") or "Compiling entry" in line or "stack frame" in line or "Used" in line:
            print("  " + line.replace("ptxas info    : ", "").strip())
    try:
        for name, cubin in paths.items():
            sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
            if name in ("fwd_mt2_bn32", "fwd_hopper", "fwd_hopper_simple", "bwd", "bwd_hopper"):
                with open(os.path.join(out_dir, f"{name}.sass"), "w") as f:
                    f.write(sass)
            ops = {}
            for op in re.findall(r"\b(HMMA|HGMMA|WARPGROUP|LDSM|LDGSTS|LDL|STL|RED|ATOM|MUFU\.EX2|BAR|SYNCS|USETMAXREG)\b", sass):
                ops[op] = ops.get(op, 0) + 1
            print(f"  SASS {name}: {ops}")
    except FileNotFoundError:
        print("  (no cuobjdump)")
    return paths


def u64(t):
    return np.uint64(0 if t is None else t.data_ptr())


def dq_map(qn, dq_accum_ptr):
    """The Hopper backward's bulk reduce-add target: dq_accum [B,S,H,192] f32 seen as 5-D (32
    columns, 6 blocks of 32 columns, H, S, B) in boxes of 64 columns × 16 queries (128-byte
    lines, as the swizzle needs). Deterministic mode has no dq_accum (never used): any aligned
    address."""
    B, S, H, _ = qn.shape
    addr = int(dq_accum_ptr) or qn.data_ptr()
    row = D_QK * 4
    return tma_launch.TensorMap(tma_launch.F32, addr, [32, D_QK // 32, H, S, B], [128, row, row * H, row * H * S],
                                [32, 2, 1, HOPPER_BWD_DQ_ROWS, 1])


class MlaKernels:
    def __init__(self, cubins, fwd_variant=next(iter(FWD_VARIANTS))):
        self.fwd_variants = {}
        for v in HOPPER_VARIANTS:
            if f"fwd_{v}" not in cubins:
                continue
            hop = cupy.RawModule(path=cubins[f"fwd_{v}"]).get_function("mla_attention_fwd_hopper")
            hop.max_dynamic_shared_size_bytes = HOPPER_SMEM
            self.fwd_variants[v] = (hop, HOPPER_SMEM, HOPPER_ROWS, HOPPER_THREADS, True)
        for v, (mt, bn, _) in reversed(list(FWD_VARIANTS.items())):  # the default last
            if f"fwd_{v}" not in cubins:
                continue
            fn = cupy.RawModule(path=cubins[f"fwd_{v}"]).get_function("mla_attention_fwd")
            fn.max_dynamic_shared_size_bytes = fwd_smem(mt, bn)
            self.fwd_variants[v] = (fn, fwd_smem(mt, bn), fwd_rows(mt), FWD_THREADS, False)
        self.use_fwd(fwd_variant)
        self.work = torch.zeros(1, dtype=torch.int32, device="cuda")  # the Hopper forward's work counter
        self.work_claims = 0
        if "bwd" not in cubins:
            return
        bwd = cupy.RawModule(path=cubins["bwd"])
        self.pre = bwd.get_function("mla_attention_bwd_preprocess")
        self.dkdv = bwd.get_function("mla_attention_bwd_dkdv")
        self.dkdv.max_dynamic_shared_size_bytes = DKDV_SMEM
        self.dq = bwd.get_function("mla_attention_bwd_dq")
        self.dq.max_dynamic_shared_size_bytes = DQ_SMEM
        self.finish = bwd.get_function("mla_attention_bwd_finish")
        self.dkdv_hopper = None
        if "bwd_hopper" in cubins:
            self.dkdv_hopper = cupy.RawModule(path=cubins["bwd_hopper"]).get_function("mla_attention_bwd_dkdv_hopper")
            self.dkdv_hopper_prof = {}
            self.dkdv_hopper_mods = {}
            for v in HOPPER_BWD_PROFILES:
                self.dkdv_hopper_mods[v] = cupy.RawModule(path=cubins[f"bwd_hopper_{v}"])
                fn = self.dkdv_hopper_mods[v].get_function("mla_attention_bwd_dkdv_hopper")
                fn.max_dynamic_shared_size_bytes = HOPPER_BWD_SMEM
                self.dkdv_hopper_prof[v] = fn
            self.dkdv_hopper.max_dynamic_shared_size_bytes = HOPPER_BWD_SMEM

    def use_fwd(self, variant):
        self.fwd, self.fwd_smem, self.fwd_rows, self.fwd_threads, self.fwd_heads_first = self.fwd_variants[variant]

    def forward(self, qn, qp, kn, kp, v, o, lse, causal, scale):
        B, S, H, _ = qn.shape
        tiles = (S + self.fwd_rows - 1) // self.fwd_rows
        grid = (tiles, H, B)
        if self.fwd_heads_first:  # the Hopper kernel reads q, k, v through TMA tensor maps
            rows, keys = self.fwd_rows, HOPPER_KEYS
            items = H * tiles * B
            grid = (min(items, cupy.cuda.Device().attributes["MultiProcessorCount"]), 1, 1)
            tma_launch.launch(self.fwd, grid, (self.fwd_threads, 1, 1), self.fwd_smem, cupy.cuda.get_current_stream().ptr,
                              [tma_launch.head_rows(qn, rows), tma_launch.head_rows(qp, rows), tma_launch.head_rows(kn, keys),
                               tma_launch.shared_rows(kp, keys), tma_launch.head_rows(v, keys), u64(o), u64(lse),
                               np.int32(S), np.int32(S), np.int32(H), np.float32(scale), np.int32(causal), np.int32(B),
                               u64(self.work), np.uint32(self.work_claims)])
            if grid[0] < items:
                self.work_claims = (self.work_claims + items) % 2**32
            return
        self.fwd(grid, (self.fwd_threads, 1, 1),
                 (u64(qn), u64(qp), u64(kn), u64(kp), u64(v), u64(o), u64(lse),
                  np.int32(S), np.int32(S), np.int32(H), np.float32(scale), np.int32(causal)), shared_mem=self.fwd_smem)

    def scratch(self, B, S, H, deterministic):
        f32 = dict(device="cuda", dtype=torch.float32)
        return dict(
            d_sum=torch.empty(B, H, S, **f32),
            dq_accum=None if deterministic else torch.empty(B, S, H, D_QK, **f32),
            dkpe=torch.empty(B, S, H, D_ROPE, **f32) if deterministic else torch.empty(B, S, D_ROPE, **f32),
        )

    def dkdv_args(self, g, do, qn, qp, kn, kp, v, lse, causal, scale, deterministic, sc):
        S, H = qn.shape[1], qn.shape[2]
        return (u64(qn), u64(qp), u64(kn), u64(kp), u64(v), u64(do), u64(lse), u64(sc["d_sum"]),
                u64(g["dk_nope"]), u64(g["dv"]), u64(sc["dq_accum"]), u64(sc["dkpe"]),
                np.int32(S), np.int32(S), np.int32(H), np.float32(scale), np.int32(causal), np.int32(deterministic))

    def launch_dkdv(self, args, B, S, H, hopper, tensors=None, variant=None):
        """tensors: (qn, qp, kn, kp, v, do) for the Hopper kernel, which takes TMA tensor maps of
        them in place of args' first six pointers; variant: the function of a HOPPER_BWD_PROFILES
        build in place of the default."""
        if hopper:  # the wgmma kernel: 128 keys per block, heads fastest; q/dO 64 rows per step
            fn = variant or self.dkdv_hopper
            qn, qp, kn, kp, v, do = tensors
            maps = [tma_launch.head_rows(qn, HOPPER_BWD_QUERIES), tma_launch.head_rows(qp, HOPPER_BWD_QUERIES),
                    tma_launch.head_rows(kn, HOPPER_BWD_KEYS), tma_launch.shared_rows(kp, HOPPER_BWD_KEYS),
                    tma_launch.head_rows(v, HOPPER_BWD_KEYS), tma_launch.head_rows(do, HOPPER_BWD_QUERIES)]
            tma_launch.launch(fn, (H, (S + HOPPER_BWD_KEYS - 1) // HOPPER_BWD_KEYS, B),
                              (HOPPER_BWD_THREADS, 1, 1), HOPPER_BWD_SMEM, cupy.cuda.get_current_stream().ptr,
                              maps + list(args[6:]) + [dq_map(qn, args[10])])
        else:
            self.dkdv(((S + TILE - 1) // TILE, H, B), (BWD_THREADS, 1, 1), args, shared_mem=DKDV_SMEM)

    def dkdv_alone(self, a, sc, scale, deterministic=False, hopper=True, variant=None):
        """The dK/dV(/dQ) kernel alone, causal, on a timing set a = (qn, qp, kn, kp, v, do, o, lse,
        grads) (timing_sets), with scratch sc; variant: a HOPPER_BWD_PROFILES build."""
        B, S, H, _ = a[0].shape
        self.launch_dkdv(self.dkdv_args(a[8], a[5], *a[:5], a[7], True, scale, deterministic, sc), B, S, H, hopper, a[:6],
                         variant)

    def backward(self, g, do, qn, qp, kn, kp, v, o, lse, causal, scale, deterministic, sc, hopper=False, variant=None):
        """hopper: mla_attention_bwd_dkdv_hopper in place of mla_attention_bwd_dkdv (the host's
        swap); preprocess, the deterministic dq pass and finish are the same kernels."""
        B, S, H, _ = qn.shape
        tiles = (S + TILE - 1) // TILE
        self.preprocess(o, do, sc, deterministic)
        self.launch_dkdv(self.dkdv_args(g, do, qn, qp, kn, kp, v, lse, causal, scale, deterministic, sc), B, S, H, hopper,
                         (qn, qp, kn, kp, v, do), variant)
        if deterministic:
            self.dq((tiles, H, B), (BWD_THREADS, 1, 1),
                    (u64(qn), u64(qp), u64(kn), u64(kp), u64(v), u64(do), u64(lse), u64(sc["d_sum"]),
                     u64(g["dq_nope"]), u64(g["dq_pe"]), np.int32(S), np.int32(S), np.int32(H), np.float32(scale), np.int32(causal)),
                    shared_mem=DQ_SMEM)
        self.finish_grads(g, sc, scale, deterministic)

    def preprocess(self, o, do, sc, deterministic):
        """D = rowsum(dO∘O) into sc["d_sum"], and zeros into the accumulators the backward adds to."""
        B, S, H, _ = o.shape
        rows = B * S * H
        per_block = PRE_THREADS // 32  # one warp per row
        self.pre(((rows + per_block - 1) // per_block, 1, 1), (PRE_THREADS, 1, 1),
                 (u64(o), u64(do), u64(sc["d_sum"]), u64(sc["dq_accum"]), u64(None if deterministic else sc["dkpe"]),
                  np.int32(rows), np.int32(S), np.int32(H), np.int64(0 if deterministic else B * S * D_ROPE)))

    def finish_grads(self, g, sc, scale, deterministic):
        """dq_accum → scaled bf16 dq_nope/dq_pe (fast mode), dk_pe summed over heads."""
        B, S, H, _ = g["dq_nope"].shape
        self.finish((B * S, 1, 1), (FINISH_THREADS, 1, 1),
                    (u64(sc["dq_accum"]), u64(g["dq_nope"]), u64(g["dq_pe"]), u64(sc["dkpe"]), u64(g["dk_pe"]),
                     np.int32(H), np.float32(scale), np.int32(deterministic), np.int32(B * S), np.int32(B * S)))


def random_inputs(B, S, H, gen, q_mag=1.0):
    bf = dict(device="cuda", dtype=torch.bfloat16)
    qn = (torch.randn(B, S, H, D_NOPE, generator=gen, device="cuda") * q_mag).to(torch.bfloat16)
    qp = (torch.randn(B, S, H, D_ROPE, generator=gen, device="cuda") * q_mag).to(torch.bfloat16)
    kn = torch.randn(B, S, H, D_NOPE, generator=gen, **bf)
    kp = torch.randn(B, S, 1, D_ROPE, generator=gen, **bf)
    v = torch.randn(B, S, H, D_V, generator=gen, **bf)
    do = torch.randn(B, S, H, D_V, generator=gen, **bf)
    return qn, qp, kn, kp, v, do


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), device="cuda", dtype=dtype)


def reference(qn, qp, kn, kp, v, do, causal, scale):
    """float64: o, lse, and gradients by autograd (k_pe's gradient sums over heads via expand)."""
    leaves = [x.double().requires_grad_() for x in (qn, qp, kn, kp, v)]
    qn64, qp64, kn64, kp64, v64 = leaves
    B, S, H, _ = qn.shape
    q = torch.cat([qn64, qp64], -1)
    k = torch.cat([kn64, kp64.expand(B, S, H, D_ROPE)], -1)
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    o = torch.einsum("bhst,bthd->bshd", torch.softmax(scores, -1), v64)
    o.backward(do.double())
    names = ("dq_nope", "dq_pe", "dk_nope", "dk_pe", "dv")
    return o.detach(), lse.detach(), {n: x.grad for n, x in zip(names, leaves)}


def errors(x, ref):
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("nan"), float("nan")
    d = x - ref
    if ref.norm() == 0:  # S = 1: the softmax is constant, dq and dk vanish; compare absolutely
        return d.norm().item() / math.sqrt(d.numel()), d.abs().max().item()
    return (d.norm() / ref.norm()).item(), (d.abs().max() / ref.abs().max()).item()




def check(k, out_dir, fwd_only=False):
    print("correctness (rel = ‖ours−ref‖/‖ref‖, maxrel = max|ours−ref|/max|ref|; ref float64)")
    gen = torch.Generator(device="cuda").manual_seed(1234)
    cases = [(1, 1, 3, True, 1.0), (2, 17, 3, True, 1.0), (2, 100, 16, True, 1.0), (1, 129, 3, True, 1.0),
             (2, 1000, 16, True, 1.0), (2, 17, 3, False, 1.0), (1, 129, 16, False, 1.0), (2, 1000, 3, False, 1.0),
             (1, 300, 4, True, 3.0), (2, 1000, 3, True, 1.0), (1, 256, 2, True, 1.0), (1, 257, 3, True, 2.0),
             (1, 2048, 16, True, 1.0)]
    ok = True
    worst = {}
    for B, S, H, causal, q_mag in cases:
        scale = D_QK ** -0.5
        qn, qp, kn, kp, v, do = random_inputs(B, S, H, gen, q_mag)
        o_ref, lse_ref, g_ref = reference(qn, qp, kn, kp, v, do, causal, scale)
        res, line_ok, lse_err, lse_hop = {}, True, 0.0, 0.0
        # Every forward variant; the default one goes last, and its o and lse feed the backward.
        # Every built variant; the default (FWD_VARIANTS' first) last, so its o feeds the backward.
        for variant in k.fwd_variants:
            if variant.startswith("prof_"):
                continue
            k.use_fwd(variant)
            o = nan_like((B, S, H, D_V), torch.bfloat16)
            lse = nan_like((B, H, S), torch.float32)
            k.forward(qn, qp, kn, kp, v, o, lse, causal, scale)
            torch.cuda.synchronize()
            name = "o" if variant == next(iter(FWD_VARIANTS)) else f"o/{variant}"
            res[name] = errors(o, o_ref)
            e = ((lse.double() - lse_ref).abs() / lse_ref.abs().clamp(min=1)).max().item() if torch.isfinite(lse).all() else float("nan")
            lse_err = max(lse_err, e) if e == e else e
            if variant in HOPPER_VARIANTS:
                lse_hop = max(lse_hop, e) if e == e else e
                worst["lse/hopper"] = (max(worst.get("lse/hopper", (0.0, 0.0))[0], e if e == e else math.inf), 0.0)
            line_ok = line_ok and res[name][0] <= 1e-2 and e <= 1e-4
        grads_by_mode = {}
        for det in (() if fwd_only else (False, True)):
            g = {n: nan_like(x.shape, torch.bfloat16) for n, x in
                 (("dq_nope", qn), ("dq_pe", qp), ("dk_nope", kn), ("dk_pe", kp), ("dv", v))}
            k.backward(g, do, qn, qp, kn, kp, v, o, lse, causal, scale, det, k.scratch(B, S, H, det))
            torch.cuda.synchronize()
            grads_by_mode[det] = g
            for n in g:
                e = errors(g[n], g_ref[n])
                res[f"{n}{'/det' if det else ''}"] = e
                line_ok = line_ok and e[0] <= 2e-2
        # Deterministic mode: a second run must match bit for bit.
        det_same = True
        if not fwd_only:
            g2 = {n: nan_like(x.shape, torch.bfloat16) for n, x in grads_by_mode[True].items()}
            k.backward(g2, do, qn, qp, kn, kp, v, o, lse, causal, scale, True, k.scratch(B, S, H, True))
            torch.cuda.synchronize()
            det_same = all(torch.equal(g2[n], grads_by_mode[True][n]) for n in g2)
        line_ok = line_ok and det_same
        ok = ok and line_ok
        for name, (rel, mx) in res.items():
            w = worst.get(name, (0.0, 0.0))
            worst[name] = (max(w[0], rel if rel == rel else math.inf), max(w[1], mx if mx == mx else math.inf))
        desc = " ".join(f"{n}={r:.1e}/{m:.1e}" for n, (r, m) in res.items() if "/det" not in n)
        desc_det = " ".join(f"{n.split('/')[0]}={r:.1e}" for n, (r, m) in res.items() if "/det" in n)
        print(f"  B={B} S={S:4d} H={H:2d} {'causal' if causal else 'full  '} |q|x{q_mag:g}: "
              f"{'ok  ' if line_ok else 'FAIL'} lse={lse_err:.1e} (hopper {lse_hop:.1e}) {desc} | det: {desc_det} repeat-identical={det_same}")
    # cuDNN's own error on one shape, for scale.
    B, S, H = 2, 1000, 16
    qn, qp, kn, kp, v, do = random_inputs(B, S, H, gen)
    o_ref, _, g_ref = reference(qn, qp, kn, kp, v, do, True, D_QK ** -0.5)
    q = torch.cat([qn, qp], -1).transpose(1, 2).detach().requires_grad_()
    kk = torch.cat([kn, kp.expand(B, S, H, D_ROPE)], -1).transpose(1, 2).detach().requires_grad_()
    vv = v.transpose(1, 2).detach().requires_grad_()
    oc = cudnn_sdpa(q, kk, vv, True, D_QK ** -0.5)
    dq, dk, dv = torch.autograd.grad(oc, (q, kk, vv), do.transpose(1, 2))
    dk = dk.transpose(1, 2)
    print(f"  cuDNN for scale, B=2 S=1000 H=16 causal: o={errors(oc.transpose(1, 2), o_ref)[0]:.1e} "
          f"dq_nope={errors(dq.transpose(1, 2)[..., :D_NOPE], g_ref['dq_nope'])[0]:.1e} "
          f"dk_pe={errors(dk[..., D_NOPE:].float().sum(2, keepdim=True), g_ref['dk_pe'])[0]:.1e} "
          f"dv={errors(dv.transpose(1, 2), g_ref['dv'])[0]:.1e}")
    print("  worst rel / maxrel: " + " ".join(f"{n}={r:.1e}/{m:.1e}" for n, (r, m) in worst.items()))
    print(f"correctness: {'PASS' if ok else 'FAIL'}")
    return ok


def time_cudnn_fwd(b, h, s, reps):
    gen = torch.Generator(device="cuda").manual_seed(0)
    set_bytes = b * s * h * (2 * D_QK + 2 * D_V) * 2
    sets = [cudnn_inputs(b, s, h, gen) for _ in range(sets_to_rotate(set_bytes))]
    ms = time_ms([lambda q=q, kk=kk, v=v: cudnn_sdpa(q, kk, v, True, D_QK ** -0.5) for q, kk, v, _ in sets], reps)
    del sets
    torch.cuda.empty_cache()
    return ms


def bench_fwd(k, seqs, b=1, h=16):
    """Forward only: each variant twice (the spread between the two is the noise), then cuDNN."""
    print(f"forward timing on {torch.cuda.get_device_name()}: b={b} h={h} causal bf16, median of CUDA-event timings")
    variants = list(k.fwd_variants)
    hop = next(v for v in variants if v in HOPPER_VARIANTS)
    scale = D_QK ** -0.5
    rows = []
    for s in seqs:
        reps = 30 if s <= 8192 else 10
        sets = timing_sets(k, b, s, h, scale, backward=False)
        ms = {}
        for rnd in range(2):
            for variant in variants:
                k.use_fwd(variant)
                t = time_ms([lambda a=a: k.forward(*a, True, scale) for a in sets], reps)
                ms.setdefault(variant, []).append(t)
        del sets
        torch.cuda.empty_cache()
        peer = time_cudnn_fwd(b, h, s, reps)
        f = attention_flops(b, h, s)
        rows.append((s, ms, peer, f))
        print(f"  s={s}: " + ", ".join(f"{v} {t[0]:.3f}/{t[1]:.3f} ms {f / min(t) / 1e9:.0f} TF" for v, t in ms.items())
              + f" | cuDNN {peer:.3f} ms {f / peer / 1e9:.0f} TF", flush=True)
    print(f"\n| s (b={b}) | " + " | ".join(f"{v} ms / TF" for v in variants) + " | cuDNN fwd ms / TF | cuDNN / first hopper |")
    print("|---|" + "---|" * (len(variants) + 2))
    for s, ms, peer, f in rows:
        cells = " | ".join(f"{min(ms[v]):.3f} / {f / min(ms[v]) / 1e9:.0f}" for v in variants)
        print(f"| {s} | {cells} | {peer:.3f} / {f / peer / 1e9:.0f} | {peer / min(ms[hop]):.2f}x |")


def timing_sets(k, b, s, h, scale, backward=True):
    """Enough input sets that L2 never serves a repeat. backward: (qn, qp, kn, kp, v, do, o, lse,
    grads) with o and lse from the current forward (causal) and unwritten gradient tensors;
    else (qn, qp, kn, kp, v, o, lse) with o and lse unwritten."""
    gen = torch.Generator(device="cuda").manual_seed(s)
    set_bytes = b * s * h * (D_NOPE * 2 + D_ROPE + 2 * D_V) * 2
    sets = []
    for _ in range(sets_to_rotate(set_bytes)):
        qn, qp, kn, kp, v, do = random_inputs(b, s, h, gen)
        o = torch.empty(b, s, h, D_V, device="cuda", dtype=torch.bfloat16)
        lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
        if not backward:
            sets.append((qn, qp, kn, kp, v, o, lse))
            continue
        k.forward(qn, qp, kn, kp, v, o, lse, True, scale)
        g = {n: torch.empty_like(x) for n, x in (("dq_nope", qn), ("dq_pe", qp), ("dk_nope", kn), ("dk_pe", kp), ("dv", v))}
        sets.append((qn, qp, kn, kp, v, do, o, lse, g))
    return sets


def bench(k, seqs, b=1, h=16, with_det=True):
    print(f"timing on {torch.cuda.get_device_name()}: b={b} h={h} causal bf16, median of CUDA-event timings")
    scale = D_QK ** -0.5
    rows = []
    for s in seqs:
        reps = 30 if s <= 8192 else 10
        sets = timing_sets(k, b, s, h, scale)
        sc = k.scratch(b, s, h, False)
        scd = k.scratch(b, s, h, True) if with_det else None
        fwd_by_variant = {}
        for variant in k.fwd_variants:
            k.use_fwd(variant)
            fwd_by_variant[variant] = time_ms([lambda a=a: k.forward(*a[:5], a[6], a[7], True, scale) for a in sets], reps)
        fwd = fwd_by_variant[next(iter(FWD_VARIANTS))]
        print(f"  s={s} forward variants: " + ", ".join(f"{v} {ms:.3f} ms {attention_flops(b, h, s) / ms / 1e9:.0f} TF"
                                                      for v, ms in fwd_by_variant.items()))
        if s in (8192, 16384):
            # Where the backward's time goes: each kernel alone, on one input set.
            a = sets[0]
            qn, qp, kn, kp, v, do, o, lse, g = a
            tiles = (s + TILE - 1) // TILE
            dkdv = lambda det, sc_: k.dkdv((tiles, h, b), (BWD_THREADS, 1, 1), (
                u64(qn), u64(qp), u64(kn), u64(kp), u64(v), u64(do), u64(lse), u64(sc_["d_sum"]), u64(g["dk_nope"]),
                u64(g["dv"]), u64(sc_["dq_accum"]), u64(sc_["dkpe"]), np.int32(s), np.int32(h), np.float32(scale),
                np.int32(1), np.int32(det)), shared_mem=DKDV_SMEM)
            dq = lambda: k.dq((tiles, h, b), (BWD_THREADS, 1, 1), (
                u64(qn), u64(qp), u64(kn), u64(kp), u64(v), u64(do), u64(lse), u64(scd["d_sum"]), u64(g["dq_nope"]),
                u64(g["dq_pe"]), np.int32(s), np.int32(h), np.float32(scale), np.int32(1)), shared_mem=DQ_SMEM)
            split = {
                "preprocess": time_ms([lambda: k.preprocess(o, do, sc, False)], reps),
                "dkdv+dq atomics": time_ms([lambda: dkdv(False, sc)], reps),
                "dkdv alone (det)": time_ms([lambda: dkdv(True, scd)], reps),
                "dq (det)": time_ms([dq], reps),
                "finish": time_ms([lambda: k.finish_grads(g, sc, scale, False)], reps),
                "finish (det)": time_ms([lambda: k.finish_grads(g, scd, scale, True)], reps),
            }
            print(f"  s={s} backward kernels alone (ms): " + ", ".join(f"{n} {ms:.3f}" for n, ms in split.items()))
        bwd = time_ms([lambda a=a: k.backward(a[8], a[5], *a[:5], a[6], a[7], True, scale, False, sc) for a in sets], reps)
        bwd_det = time_ms([lambda a=a: k.backward(a[8], a[5], *a[:5], a[6], a[7], True, scale, True, scd) for a in sets],
                          reps) if with_det else float("nan")
        del sets, sc, scd
        torch.cuda.empty_cache()
        peer = time_cudnn(b, h, s, True, reps)
        f, fb = attention_flops(b, h, s), attention_flops(b, h, s, backward=True)
        row = (s, fwd, f / fwd / 1e9, peer["fwd_ms"], peer["fwd_tflops"], bwd, fb / bwd / 1e9, bwd_det,
               peer["bwd_ms"], peer["bwd_tflops"])
        rows.append(row)
        print("  s={} ours fwd {:.3f} ms {:.0f} TF | cuDNN fwd {:.3f} ms {:.0f} TF | ours bwd {:.3f} ms {:.0f} TF "
              "(det {:.3f}) | cuDNN bwd {:.3f} ms {:.0f} TF".format(*row), flush=True)
    print("\n| s | ours fwd ms / TFLOPS | cuDNN fwd | ours bwd ms / TFLOPS | ours bwd det ms | cuDNN bwd |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} / {r[2]:.0f} | {r[3]:.3f} / {r[4]:.0f} | {r[5]:.3f} / {r[6]:.0f} | {r[7]:.3f} | "
              f"{r[8]:.3f} / {r[9]:.0f} |")


def check_hopper_bwd(k):
    """The Hopper backward against float64 on awkward shapes, outputs poisoned: fast mode (dQ
    by atomics into dq_accum, dk_pe by atomics) and deterministic-dkdv mode (dq_accum null:
    no dQ in the Hopper kernel, the mma.sync dq pass; dk_pe per head), next to the mma.sync
    backward's errors on the same inputs. Prints before each case, so a hang names its shape."""
    print("Hopper backward correctness (rel = ‖ours−ref‖/‖ref‖ / maxrel; ref float64; "
          "mma = the mma.sync backward on the same o, lse)")
    gen = torch.Generator(device="cuda").manual_seed(4321)
    cases = [(2, S, H, True, 1.0) for S in (1, 17, 129, 300, 1000, 2048) for H in (3, 16)]
    cases += [(2, 17, 3, False, 1.0), (2, 300, 3, False, 1.0), (1, 1000, 16, False, 1.0), (2, 300, 16, True, 3.0),
              (1, 256, 3, True, 1.0), (1, 257, 3, True, 2.0), (1, 4096, 2, True, 1.0)]
    ok, worst = True, {}
    names = ("dq_nope", "dq_pe", "dk_nope", "dk_pe", "dv")
    alts = [(f"hop:{v}", True, False, var) for v, var in k.dkdv_hopper_prof.items() if not v.startswith("prof_")]
    for B, S, H, causal, q_mag in cases:
        print(f"  B={B} S={S:4d} H={H:2d} {'causal' if causal else 'full  '} |q|x{q_mag:g}: ", end="", flush=True)
        scale = D_QK ** -0.5
        qn, qp, kn, kp, v, do = random_inputs(B, S, H, gen, q_mag)
        _, _, g_ref = reference(qn, qp, kn, kp, v, do, causal, scale)
        o = nan_like((B, S, H, D_V), torch.bfloat16)
        lse = nan_like((B, H, S), torch.float32)
        k.forward(qn, qp, kn, kp, v, o, lse, causal, scale)
        res, line_ok = {}, True
        for tag, hopper, det, variant in [("hop", True, False, None), ("hop/det", True, True, None),
                                          ("mma", False, False, None)] + alts:
            g = {n: nan_like(x.shape, torch.bfloat16) for n, x in zip(names, (qn, qp, kn, kp, v))}
            sc = k.scratch(B, S, H, det)
            for x in sc.values():  # poison the scratch too: preprocess must zero what is added into
                if x is not None:
                    x.fill_(float("nan"))
            k.backward(g, do, qn, qp, kn, kp, v, o, lse, causal, scale, det, sc, hopper=hopper, variant=variant)
            torch.cuda.synchronize()
            for n in names:
                e = errors(g[n], g_ref[n])
                res[f"{n}/{tag}"] = e
                if hopper:
                    line_ok = line_ok and e[0] <= 2e-2
                    w = worst.get(f"{n}/{tag}", (0.0, 0.0))
                    worst[f"{n}/{tag}"] = (max(w[0], e[0] if e[0] == e[0] else math.inf),
                                           max(w[1], e[1] if e[1] == e[1] else math.inf))
        ok = ok and line_ok
        print(("ok   " if line_ok else "FAIL ") + " ".join(
            f"{n}={res[n + '/hop'][0]:.1e}/{res[n + '/hop'][1]:.1e}(det {res[n + '/hop/det'][0]:.1e}, mma {res[n + '/mma'][0]:.1e})"
            for n in names), flush=True)
        del g_ref
        torch.cuda.empty_cache()
    print("  worst rel / maxrel: " + " ".join(f"{n}={r:.1e}/{m:.1e}" for n, (r, m) in worst.items()))
    print(f"Hopper backward correctness: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def clock_probe(k, seqs, b=1, h=16, seconds=3.0):
    """SM clock, power and temperature (nvidia-smi, every 100 ms) while our whole backward and
    then cuDNN's run back to back for `seconds` each: whether a longer kernel runs at a lower
    clock (power or heat) rather than more cycles per step."""
    scale = D_QK ** -0.5
    gen = torch.Generator(device="cuda").manual_seed(7)
    for s in seqs:
        sets = timing_sets(k, b, s, h, scale)
        sc = k.scratch(b, s, h, False)
        ours = [lambda a=a: k.backward(a[8], a[5], *a[:5], a[6], a[7], True, scale, False, sc, hopper=True) for a in sets]
        q, kk, v, do = cudnn_inputs(b, s, h, gen)
        q, kk, v = (x.detach().requires_grad_() for x in (q, kk, v))
        out = cudnn_sdpa(q, kk, v, True, scale)
        peer = [lambda: torch.autograd.grad(out, (q, kk, v), do, retain_graph=True)]
        # The Hopper kernel alone, default and each --bwd-variants build (e.g. prof_nostaging:
        # what the dQ staging costs in power as well as in cycles).
        kernels = [(f"kernel {v}", [lambda a=a, fn=fn: k.dkdv_alone(a, sc, scale, variant=fn) for a in sets])
                   for v, fn in [("default", None)] + list(k.dkdv_hopper_prof.items())]
        for name, calls in [("ours", ours), ("cuDNN", peer)] + kernels:
            calls[0]()  # warm-up (cuDNN builds its plan on the first call)
            torch.cuda.synchronize()
            smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                                    "--format=csv,noheader,nounits", "-lms", "100"], stdout=subprocess.PIPE, text=True)
            t0, n = time.time(), 0
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            while time.time() - t0 < seconds:
                calls[n % len(calls)]()
                n += 1
                if n % 4 == 0:
                    torch.cuda.synchronize()
            end.record()
            torch.cuda.synchronize()
            smi.terminate()
            rows = [[float(x) for x in line.split(",")] for line in smi.communicate()[0].splitlines() if line.strip()]
            rows = rows[len(rows) // 3:]  # after the first third: settled
            mean = lambda i: sum(r[i] for r in rows) / max(1, len(rows))
            print(f"  s={s} {name}: {start.elapsed_time(end) / n:.3f} ms per call over {n} calls; "
                  f"SM clock {mean(0):.0f} MHz (min {min(r[0] for r in rows):.0f}), power {mean(1):.0f} W, "
                  f"{mean(2):.0f} C ({len(rows)} samples)", flush=True)
        del sets, sc, ours, peer, kernels, out, q, kk, v, do
        torch.cuda.empty_cache()


def reduce_probe(out_dir, h=16):
    """bench/tma_reduce_probe.cu: f32 reduce-add throughput into a dq_accum-shaped [1, S, h, 192]
    f32 tensor whose first S rows the adds walk (24 MB: L2 holds it; 384 MB: it does not): with
    fewer SMs (the SM's limit or the card's), more issuing lanes per warp (the thread's or the
    warp's), adds from registers through the LSU (red.global.add.v4.f32) alone and beside
    copy-engine warps, restaged boxes as the backward stages them, and boxes of 1-8 KB. What it
    found (bench/attention_notes.md): a warp's reduce-adds are serialised at about the same cost
    per add up to 4 KB (so the backward's dQ boxes are 4 KB); an SM's copy engine tops out near
    17.5 bytes/clock; the card's L2 near 3.3 TB/s of f32 adds by either path, ~1.0 TB/s when the
    adds miss L2."""
    cubin = os.path.join(out_dir, "tma_reduce_probe.cubin")
    src = os.path.join(REPO, "bench", "tma_reduce_probe.cu")
    r = subprocess.run(["nvcc", "-std=c++17", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-I", KERNELS,
                        *define_flags(DEFINES["common"]), "-o", cubin, src], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nvcc failed for {src}:\n{r.stderr}")
    fn = cupy.RawModule(path=cubin).get_function("tma_reduce_probe")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"f32 reduce-add throughput on {torch.cuda.get_device_name()} ({sms} SMs; 2 KB boxes; fixed boxes unless said)")
    # (rows, blocks, warps, slots, restage, flat, issuing lanes, first LSU warp, box rows)
    cases = [(2048, n, 8, 2, 0, 0, 1, 8, 16) for n in (sms, sms // 2, sms // 4, sms // 8)]
    cases += [(2048, sms, 1, n, 0, 0, n, 8, 16) for n in (1, 2, 4)] + [(2048, sms, 4, n, 0, 0, n, 8, 16) for n in (1, 2, 4)]
    cases += [(2048, sms // 4, 4, 4, 0, 0, 4, 8, 16)]
    cases += [(rows, sms, w, 1, 0, 0, 1, 0, 16) for rows in (2048, 32768) for w in (4, 8)]
    cases += [(2048, sms // 4, 8, 1, 0, 0, 1, 0, 16)]
    cases += [(2048, sms, 8, 2, 0, 0, 1, 4, 16), (2048, sms, 8, 2, 1, 0, 1, 4, 16), (2048, sms, 4, 1, 1, 0, 1, 8, 16)]
    # Box size: 8, 16, 32, 64 rows of 32 f32 (1-8 KB), one per warp at a time, 4 warps, all SMs
    # and a quarter of them.
    cases += [(2048, n, w, 1, 0, 0, 1, 8, r) for n in (sms, sms // 4) for w in (1, 4) for r in (8, 16, 32, 64)]
    for s_rows in (2048, 32768):
        dq = torch.zeros(1, s_rows, h, D_QK, device="cuda", dtype=torch.float32)
        row = D_QK * 4
        maps = {r: tma_launch.TensorMap(tma_launch.F32, dq.data_ptr(), [D_QK, h, s_rows, 1],
                                        [row, row * h, row * h * s_rows], [32, 1, r, 1]) for r in (8, 16, 32, 64)}
        cycles = torch.zeros(sms * 8, device="cuda", dtype=torch.int64)
        for rows, blocks, warps, slots, restage, flat, lanes, lsu_from, box_rows in cases:
            if rows != s_rows:
                continue
            iters = 3000
            # > half an SM's shared memory: one block per SM (it uses 8 · slots · box bytes)
            smem = max(120 * 1024, 8 * slots * box_rows * 128 + 1024)
            fn.max_dynamic_shared_size_bytes = smem
            args = [maps[box_rows], np.int32(warps), np.int32(slots), np.int32(iters), np.int32(s_rows), np.int32(h),
                    np.int32(restage), u64(cycles), u64(dq), np.int32(flat), np.int32(lanes), np.int32(lsu_from),
                    np.int32(box_rows)]
            dq.zero_()
            launch = lambda: tma_launch.launch(fn, (blocks, 1, 1), (256, 1, 1), smem, cupy.cuda.get_current_stream().ptr,
                                               args)
            launch()
            torch.cuda.synchronize()
            want = blocks * warps * iters * 32 * box_rows
            got = float(dq.double().sum())
            ms = time_ms([launch], 5, warmup=1)
            gbs = blocks * warps * iters * 128 * box_rows / ms / 1e6
            cyc = cycles[:blocks * warps].double().view(blocks, warps).mean(0) / iters
            tma_w, lsu_w = min(warps, lsu_from), max(0, warps - lsu_from)
            how = []
            if tma_w:
                how.append(f"{tma_w} copy-engine warps ({'restaged' if restage else 'fixed'}, "
                           f"{'contiguous' if flat else 'tensor'}, {slots} in flight, {lanes} issuing lanes"
                           f"{'' if box_rows == 16 else f', {box_rows * 128 // 1024} KB boxes'})")
            if lsu_w:
                how.append(f"{lsu_w} LSU warps")
            per = f"{float(cyc[:tma_w].mean()):.0f} cycles/box/warp" if tma_w else ""
            if lsu_w:
                per += f"{', ' if per else ''}LSU {float(cyc[tma_w:].mean()):.0f} cycles/box/warp"
            print(f"  {s_rows:5d} rows ({dq.numel() * 4 / 2**20:.0f} MB), {blocks:3d} blocks, {' + '.join(how)}: "
                  f"{gbs:.0f} GB/s ({gbs / blocks:.1f} per block), {per}"
                  f"{'' if got == want else f'  WRONG SUM {got} != {want}'}", flush=True)
        del dq
        torch.cuda.empty_cache()


def print_clocks(k, run, s, variant="prof_clocks"):
    """One launch of the prof_clocks build; its per-phase cycles, averaged per step (each
    consumer records every step; the producer's lane 0 too), summed over SMs."""
    table = k.dkdv_hopper_mods[variant].get_global("hb_clocks")
    clocks = cupy.ndarray((HB_CLOCK_SLOTS,), dtype=cupy.uint64, memptr=table)
    clocks.fill(0)
    torch.cuda.synchronize()
    run()
    torch.cuda.synchronize()
    raw = clocks.get()
    c = raw.reshape(-1, 3, 16).sum(axis=0).astype(np.float64)
    steps = c[0, HB_STEPS]  # both consumers' steps
    per = lambda role, ph: c[role, ph] / (steps / 2)
    for role, name in ((1, "consumer 0"), (2, "consumer 1")):
        total = sum(per(role, i) for i, n in enumerate(HB_PHASES) if n)
        print(f"  s={s} clocks per step, {name}: total {total:.0f} | " + ", ".join(
            f"{n} {per(role, i):.0f}" for i, n in enumerate(HB_PHASES) if n)
            + " (dQ step: " + ", ".join(f"{n} {per(role, i):.0f}" for i, n in HB_DQ_PHASES.items()) + ")", flush=True)
    print(f"  s={s} clocks per step, producer: wait empty {per(0, 0):.0f}, issue+lse/D {per(0, 1):.0f}", flush=True)


def bench_hopper_bwd(k, seqs, b=1, h=16):
    """Backward timing, fast mode: the whole backward with the Hopper kernel and with the
    mma.sync one (same preprocess/finish), each kernel alone, and cuDNN; median of CUDA events."""
    print(f"backward timing on {torch.cuda.get_device_name()}: b={b} h={h} causal bf16, median of CUDA-event timings")
    scale = D_QK ** -0.5
    rows = []
    for s in seqs:
        reps = 30 if s <= 8192 else 10
        sets = timing_sets(k, b, s, h, scale)
        sc = k.scratch(b, s, h, False)
        ms = {}
        for rnd in range(2):  # twice, interleaved: the spread is the noise
            for name, hop in (("hopper", True), ("mma.sync", False)):
                t = time_ms([lambda a=a, hop=hop: k.backward(a[8], a[5], *a[:5], a[6], a[7], True, scale, False, sc, hopper=hop)
                             for a in sets], reps)
                ms.setdefault(name, []).append(t)
        a = sets[0]
        alone = {"mma.sync": time_ms([lambda: k.dkdv_alone(a, sc, scale, hopper=False)], reps)}
        # Where the Hopper kernel's time goes: without dQ (deterministic mode: no dQ GEMM, no
        # adds, no dSᵀ exchange), and the profiling / alternative builds. Three interleaved rounds,
        # the minimum reported with the spread: one round's medians moved by up to ±5%.
        sc_det = k.scratch(b, s, h, True)
        runs = {"hopper": lambda variant=None: k.dkdv_alone(a, sc, scale, variant=variant)}
        runs["no dQ"] = lambda variant=None: k.dkdv_alone(a, sc_det, scale, deterministic=True)
        for v, variant in k.dkdv_hopper_prof.items():
            runs[v] = lambda variant=variant, run=runs["hopper"]: run(variant)
        times = {n: [] for n in runs}
        for _ in range(3):
            for n, run in runs.items():
                times[n].append(time_ms([run], reps))
        alone["hopper"] = min(times["hopper"])
        # The kernels around it (DRAM-bound passes over dq_accum, O, dO).
        alone["preprocess"] = time_ms([lambda: k.preprocess(a[6], a[5], sc, False)], reps)
        alone["finish"] = time_ms([lambda: k.finish_grads(a[8], sc, scale, False)], reps)
        print(f"  s={s} profile, Hopper kernel alone {alone['hopper']:.3f} ms "
              f"(spread {max(times['hopper']) - alone['hopper']:.3f}): "
              + ", ".join(f"{n} {min(t):.3f} ms ({100 * (1 - min(t) / alone['hopper']):+.0f}%, spread {max(t) - min(t):.3f})"
                          for n, t in times.items() if n != "hopper"), flush=True)
        for v in k.dkdv_hopper_prof:
            if v.startswith("prof_clocks"):
                print(f"  {v}:")
                print_clocks(k, runs[v], s, v)
        del sets, sc, sc_det
        torch.cuda.empty_cache()
        peer = time_cudnn(b, h, s, True, reps)
        fb = attention_flops(b, h, s, backward=True)
        rows.append((s, {n: min(t) for n, t in ms.items()}, alone, peer["bwd_ms"], fb))
        print(f"  s={s}: " + ", ".join(f"{n} {t[0]:.3f}/{t[1]:.3f} ms {fb / min(t) / 1e9:.0f} TF" for n, t in ms.items())
              + " | kernel alone: " + ", ".join(f"{n} {t:.3f} ms" for n, t in alone.items())
              + f" | cuDNN {peer['bwd_ms']:.3f} ms {peer['bwd_tflops']:.0f} TF | floor {fb / 790e12 * 1e3:.3f} ms", flush=True)
    print(f"\n| s (b={b}) | hopper bwd ms / TF | mma.sync bwd ms / TF | hopper kernel alone ms | mma.sync dkdv alone ms "
          "| cuDNN bwd ms / TF | hopper / cuDNN |")
    print("|---|---|---|---|---|---|---|")
    for s, ms, alone, peer, fb in rows:
        print(f"| {s} | {ms['hopper']:.3f} / {fb / ms['hopper'] / 1e9:.0f} | {ms['mma.sync']:.3f} / {fb / ms['mma.sync'] / 1e9:.0f} "
              f"| {alone['hopper']:.3f} | {alone['mma.sync']:.3f} | {peer:.3f} / {fb / peer / 1e9:.0f} | {peer / ms['hopper']:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/mla_attention")
    ap.add_argument("--seqs", default="2048,4096,8192,16384,32768")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--fwd-only", action="store_true", help="forward checks and forward timing (hopper, mt2_bn32, cuDNN)")
    ap.add_argument("--hopper", default=",".join(HOPPER_VARIANTS), help="Hopper forward variants to build")
    ap.add_argument("--hopper-bwd", action="store_true",
                    help="check and time the Hopper backward (mla_attention_bwd_hopper.cu) only")
    ap.add_argument("--reduce-probe", action="store_true",
                    help="only the TMA f32 reduce-add throughput probe (bench/tma_reduce_probe.cu)")
    ap.add_argument("--clock-probe", action="store_true",
                    help="--hopper-bwd: SM clock and power while ours and cuDNN's backward run (no checks, no timing table)")
    ap.add_argument("--bwd-variants", default=",".join(HOPPER_BWD_PROFILES),
                    help="HOPPER_BWD_PROFILES builds to check and time next to the default")
    args = ap.parse_args()
    for v in set(HOPPER_BWD_PROFILES) - set(args.bwd_variants.split(",")):
        del HOPPER_BWD_PROFILES[v]
    os.makedirs(args.out, exist_ok=True)
    torch.cuda.init()
    cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream).use()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cupy {cupy.__version__}")
    if args.reduce_probe:
        reduce_probe(args.out)
        sys.exit(0)
    print("build (nvcc sm_90a):")
    if args.hopper_bwd:
        # The forward that feeds o and lse: the first Hopper variant asked for (the one the host
        # runs on sm_90a), else the mma.sync default.
        k = MlaKernels(build(args.out, hopper_variants=[v for v in args.hopper.split(",") if v][:1], hopper_bwd=True),
                       fwd_variant=next(iter(FWD_VARIANTS)))
        hop_fwd = [v for v in k.fwd_variants if v in HOPPER_VARIANTS]
        k.use_fwd(hop_fwd[0] if hop_fwd else next(iter(FWD_VARIANTS)))
        if args.clock_probe:
            clock_probe(k, [int(x) for x in args.seqs.split(",")])
            sys.exit(0)
        ok = True if args.no_check else check_hopper_bwd(k)
        if not args.no_bench and ok:
            bench_hopper_bwd(k, [int(x) for x in args.seqs.split(",")])
            print("training shape (4 sequences of 2048, 16 heads):")
            bench_hopper_bwd(k, [2048], b=4)
        sys.exit(0 if ok else 1)
    k = MlaKernels(build(args.out, fwd_only=args.fwd_only, hopper_variants=args.hopper.split(",")))
    ok = True if args.no_check else check(k, args.out, args.fwd_only)
    if not args.no_bench and args.fwd_only:
        bench_fwd(k, [int(x) for x in args.seqs.split(",")])
        print("training shape (4 sequences of 2048, 16 heads):")
        bench_fwd(k, [2048], b=4)
    elif not args.no_bench:
        bench(k, [int(x) for x in args.seqs.split(",")])
        print("training shape (DeepSeek-V2-Lite config of TARGETS.md: 4 sequences of 2048, 16 heads):")
        bench(k, [2048], b=4)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
