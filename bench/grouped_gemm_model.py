#!/usr/bin/env python3
"""Thread-by-thread model of the grouped expert GEMM kernels (src/backend/cuda/kernels/
grouped_gemm.cu: mma.sync; grouped_gemm_wgmma.cu: wgmma; grouped_gemm_tma.cu: TMA-fed forward
and dX; its weight product has its own model, grouped_gemm_tma_dw_model.py). No GPU; python3
with numpy.

It replays each kernel's index arithmetic as written (cp.async piece placement with zero-fill,
the padded or 128-byte-swizzled shared layouts, ldmatrix / ldmatrix.trans lane addresses and
fragment semantics, mma.sync m16n8k16 fragments, wgmma descriptors read under the swizzle model
of mla_attention_hopper.cuh, the pipeline's stage slots, the tile scheduler over device offsets,
the epilogue predicates) on small integer matrices, and requires exact equality with numpy for
forward, dX and dW (accumulated onto an initial gradient), with zero-row experts, a 1-row
expert, row tails, widths that are 64- but not 128-multiples and offsets starting at 1000.
Every global read is bounds-checked. It checks the index math against the documented
instruction semantics; it cannot check the hardware itself (the GPU tests do).
For tma (persistent CTAs): each CTA's tile walk (rounds of the grid, the row-tile cursor
checked against a scan from expert 0, every tile taken once) with a grid of 2-5 CTAs that each
walk several tiles past zero-row experts; the producer thread and both consumer warpgroups as
coroutines in random interleavings, moving the data itself through the ring, whose position runs
on across tiles: the copy engine's boxes (128-byte swizzle, zeros outside the tensor, byte counts
against the producer's expect_tx), each weight map acquired by the CTA before a copy through it,
the narrow / wide column tiles, descriptors, epilogue masks (every element stored once), and the
full/empty mbarriers (parity waits as PTX defines them; no stage refilled while a wgmma group
that reads it is in flight, none read before its own copies landed, no deadlock, every stage
given back by the end).

  python3 bench/grouped_gemm_model.py              (~40 s on one core: mma, wgmma, then tma)
  python3 bench/grouped_gemm_model.py --mutations  (tma only: plants each of a list of bugs in
                                                    turn and requires the replay to fail on it)

Keep it in step with the kernels when their tiles or layouts change.
"""
import numpy as np


def mma():
    """The mma.sync kernels (grouped_gemm.cu); returns run(counts, K, N, base)."""
    BM=BN=128; BK=32; STAGES=4; THREADS=256
    WARPS_M, WARPS_N = 2, 4; WM=BM//WARPS_M; WN=BN//WARPS_N; MI=WM//16; NI=WN//8
    KS=BK+8; MS=BM+8
    KMAJ_BYTES=BM*KS*2; MNMAJ_BYTES=BK*MS*2; TILE=max(KMAJ_BYTES,MNMAJ_BYTES); STAGE=2*TILE
    assert STAGES*STAGE == 81920

    class G:  # a global array with bounds-checked reads
        def __init__(s, a): s.a=a.ravel()
        def read8(s, idx):
            assert 0 <= idx and idx+8 <= s.a.size, ('OOB read', idx, s.a.size)
            return s.a[idx:idx+8]

    def load_stage(smem, tile, src, off, ld, r0, rows, red, kmajor):
        for tid in range(THREADS):
            if kmajor:
                P=BK//8
                for s in range(BM*P//THREADS):
                    q=tid+s*THREADS; i=q//P; p=q%P; r=r0+p*8
                    valid = i<rows and r<red
                    d=(tile+(i*KS+p*8)*2); assert d%16==0; d//=2
                    smem[d:d+8] = src.read8(off+i*ld+r) if valid else 0
            else:
                P=BM//8
                for s in range(BK*P//THREADS):
                    q=tid+s*THREADS; rr=q//P; p=q%P; r=r0+rr; i=p*8
                    valid = r<red and i<rows
                    d=(tile+(rr*MS+p*8)*2); assert d%16==0; d//=2
                    smem[d:d+8] = src.read8(off+r*ld+i) if valid else 0

    def ldsm(smem, addrs, trans):
        # addrs: 32 byte addresses; returns r[4][32][2]
        out=np.zeros((4,32,2))
        for j in range(4):
            rows=[addrs[8*j+r] for r in range(8)]
            for a in rows: assert a%16==0
            Mx=np.array([smem[a//2:a//2+8] for a in rows])  # [8 rows][8 cols]
            for t in range(32):
                if not trans: out[j,t]=Mx[t//4, 2*(t%4):2*(t%4)+2]
                else: out[j,t]=[Mx[2*(t%4), t//4], Mx[2*(t%4)+1, t//4]]
        return out

    def mma(c, a, b0, b1):
        A=np.zeros((16,16)); B=np.zeros((16,8))
        for t in range(32):
            g,tt=t//4,t%4
            for v in range(2):
                A[g][2*tt+v]=a[0][t][v]; A[g+8][2*tt+v]=a[1][t][v]; A[g][2*tt+8+v]=a[2][t][v]; A[g+8][2*tt+8+v]=a[3][t][v]
                B[2*tt+v][g]=b0[t][v]; B[2*tt+8+v][g]=b1[t][v]
        C=A@B
        for t in range(32):
            g,tt=t//4,t%4
            c[t][0]+=C[g][2*tt]; c[t][1]+=C[g][2*tt+1]; c[t][2]+=C[g+8][2*tt]; c[t][3]+=C[g+8][2*tt+1]

    def load_a(smem, tile, i0, k0, kmajor):
        if kmajor: addrs=[tile+((i0+(l&15))*KS+k0+((l>>4)<<3))*2 for l in range(32)]; return ldsm(smem, addrs, False)
        addrs=[tile+((k0+(l&7)+((l>>4)<<3))*MS+i0+(((l>>3)&1)<<3))*2 for l in range(32)]; return ldsm(smem, addrs, True)
    def load_b(smem, tile, j0, k0, kmajor):
        if kmajor: addrs=[tile+((j0+(l&7)+((l>>4)<<3))*KS+k0+(((l>>3)&1)<<3))*2 for l in range(32)]; return ldsm(smem, addrs, False)
        addrs=[tile+((k0+(l&7)+(((l>>3)&1)<<3))*MS+j0+((l>>4)<<3))*2 for l in range(32)]; return ldsm(smem, addrs, True)

    def mainloop(A, aoff, lda, rowsA, B, boff, ldb, rowsB, red, A_K, B_K):
        smem=np.full(STAGES*STAGE//2, np.nan)
        acc=np.zeros((8, MI, NI, 32, 4))  # per warp
        ktiles=(red+BK-1)//BK
        for s in range(STAGES-1):
            if s<ktiles:
                st=s*STAGE
                load_stage(smem, st, A, aoff, lda, s*BK, rowsA, red, A_K)
                load_stage(smem, st+TILE, B, boff, ldb, s*BK, rowsB, red, B_K)
        for kt in range(ktiles):
            nxt=kt+STAGES-1
            ta=(kt%STAGES)*STAGE; tb=ta+TILE
            # compute first with a snapshot (the real loads of `nxt` go to another slot; check that)
            assert nxt%STAGES != kt%STAGES
            if nxt<ktiles:
                st=(nxt%STAGES)*STAGE
                load_stage(smem, st, A, aoff, lda, nxt*BK, rowsA, red, A_K)
                load_stage(smem, st+TILE, B, boff, ldb, nxt*BK, rowsB, red, B_K)
            for w in range(8):
                wm, wn = w//WARPS_N, w%WARPS_N
                for k0 in range(0, BK, 16):
                    a=[load_a(smem, ta, wm*WM+mi*16, k0, A_K) for mi in range(MI)]
                    b=[load_b(smem, tb, wn*WN+nj*16, k0, B_K) for nj in range(NI//2)]
                    for mi in range(MI):
                        for ni in range(NI):
                            mma(acc[w,mi,ni], a[mi], b[ni//2][(ni&1)*2], b[ni//2][(ni&1)*2+1])
        assert not np.isnan(acc).any()
        return acc

    def store(acc, C, coff, ldc, rows, cols, accumulate):
        for w in range(8):
            wm, wn = w//WARPS_N, w%WARPS_N
            for t in range(32):
                g,tt=t//4,t%4
                for mi in range(MI):
                    for h in range(2):
                        i=wm*WM+mi*16+g+8*h
                        if i>=rows: continue
                        for ni in range(NI):
                            j=wn*WN+ni*8+2*tt
                            if j>=cols: continue
                            idx=coff+i*ldc+j
                            assert 0<=idx and idx+2<=C.size
                            if accumulate: C[idx]+=acc[w,mi,ni,t,2*h]; C[idx+1]+=acc[w,mi,ni,t,2*h+1]
                            else: C[idx]=acc[w,mi,ni,t,2*h]; C[idx+1]=acc[w,mi,ni,t,2*h+1]

    def find_row_tile(off, E, M, t):
        base=off[0]
        for x in range(E):
            s=min(max(off[x]-base,0),M); en=min(max(off[x+1]-base,s),M)
            tiles=(en-s+BM-1)//BM
            if t<tiles: return x, s+t*BM, en
            t-=tiles
        return None

    def run(counts, K, N, base):
        rng=np.random.default_rng(1)
        E=len(counts); M=sum(counts)
        off=[base]; [off.append(off[-1]+c) for c in counts]
        X=rng.integers(-3,4,(M,K)).astype(float); dY=rng.integers(-3,4,(M,N)).astype(float)
        W=[rng.integers(-3,4,(N,K)).astype(float) for _ in counts]
        G0=[rng.integers(-3,4,(N,K)).astype(float) for _ in counts]
        st=[o-base for o in off]
        # forward
        Y=np.full(M*N, np.nan); Xg=G(X)
        for by in range((M+BM-1)//BM+E):
            f=find_row_tile(off,E,M,by)
            if f is None: continue
            e,row0,rowEnd=f
            for bx in range((N+BN-1)//BN):
                j0=bx*BN
                acc=mainloop(Xg, row0*K, K, rowEnd-row0, G(W[e]), j0*K, K, N-j0, K, True, True)
                store(acc, Y, row0*N+j0, N, rowEnd-row0, N-j0, False)
        ref=np.concatenate([X[st[e]:st[e+1]]@W[e].T for e in range(E)]) if M else np.zeros((0,N))
        assert not np.isnan(Y).any(), 'forward: unwritten'
        assert np.array_equal(Y.reshape(M,N), ref), 'forward mismatch'
        # dX
        dX=np.full(M*K, np.nan); dYg=G(dY)
        for by in range((M+BM-1)//BM+E):
            f=find_row_tile(off,E,M,by)
            if f is None: continue
            e,row0,rowEnd=f
            for bx in range((K+BN-1)//BN):
                j0=bx*BN
                acc=mainloop(dYg, row0*N, N, rowEnd-row0, G(W[e]), j0, K, K-j0, N, True, False)
                store(acc, dX, row0*K+j0, K, rowEnd-row0, K-j0, False)
        ref=np.concatenate([dY[st[e]:st[e+1]]@W[e] for e in range(E)])
        assert not np.isnan(dX).any(), 'dX: unwritten'
        assert np.array_equal(dX.reshape(M,K), ref), 'dX mismatch'
        # dW
        Gs=[g.copy().ravel() for g in G0]
        for e in range(E):
            s=min(max(off[e]-base,0),M); en=min(max(off[e+1]-base,s),M)
            if en==s: continue
            for by in range((N+BM-1)//BM):
                for bx in range((K+BN-1)//BN):
                    i0=by*BM; j0=bx*BN
                    acc=mainloop(dYg, s*N+i0, N, N-i0, Xg, s*K+j0, K, K-j0, en-s, False, False)
                    store(acc, Gs[e], i0*K+j0, K, N-i0, K-j0, True)
        for e in range(E):
            ref=G0[e]+dY[st[e]:st[e+1]].T@X[st[e]:st[e+1]]
            assert np.array_equal(Gs[e].reshape(N,K), ref), f'dW mismatch expert {e}'
        print('ok', counts, K, N, base)
    return run


def wgmma():
    """The wgmma kernels (grouped_gemm_wgmma.cu); returns run(counts, K, N, base)."""
    BM=BN=128; BK=64; STAGES=5; THREADS=256; DIST=STAGES-2
    TILE=BM*BK*2; STAGE=2*TILE; MN_BLOCK=BK*128
    class G:
        def __init__(s,a): s.a=a.ravel()
        def read8(s,i):
            assert 0<=i and i+8<=s.a.size, ('OOB', i, s.a.size); return s.a[i:i+8]
    def load_stage(sm, tile, src, off, ld, r0, rows, red, kmajor):
        for tid in range(THREADS):
            for s in range((BM*BK//8)//THREADS):
                q=tid+s*THREADS
                if kmajor:
                    i=q>>3; p=q&7; r=r0+p*8; valid=i<rows and r<red
                    d=tile+i*128+((p^(i&7))<<4); sm[d//2:d//2+8]=src.read8(off+i*ld+r) if valid else 0
                else:
                    rr=q>>4; p=q&15; r=r0+rr; i=p*8; valid=r<red and i<rows
                    d=tile+(p>>3)*MN_BLOCK+rr*128+(((p&7)^(rr&7))<<4); sm[d//2:d//2+8]=src.read8(off+r*ld+i) if valid else 0
    def sw(addr): return addr ^ (((addr>>7)&7)<<4)
    def read_op(sm, start, lbo, sbo, kmajor, R):
        # returns M[R][16]: element (row/col index x, k)
        out=np.zeros((R,16))
        for x in range(R):
            for k in range(16):
                if kmajor: a=start+(x//8)*sbo+(x%8)*128+k*2
                else: a=start+(x//64)*lbo+(k//8)*sbo+(k%8)*128+(x%64)*2
                a=sw(a); assert a%2==0; out[x,k]=sm[a//2]
        return out
    def mainloop(A,aoff,lda,rowsA,B,boff,ldb,rowsB,red,A_K,B_K):
        base=0  # 1024-aligned
        sm=np.full((STAGES*STAGE)//2, np.nan)
        acc=np.zeros((2,64,128))
        kt_n=(red+BK-1)//BK
        for s in range(DIST):
            if s<kt_n:
                st=base+s*STAGE; load_stage(sm,st,A,aoff,lda,s*BK,rowsA,red,A_K); load_stage(sm,st+TILE,B,boff,ldb,s*BK,rowsB,red,B_K)
        inflight={}
        for kt in range(kt_n):
            nxt=kt+DIST
            slot_next=nxt%STAGES
            # slots read by groups kt-1 (in flight) and kt must differ from the refilled slot
            assert slot_next not in ((kt-1)%STAGES, kt%STAGES)
            if nxt<kt_n:
                st=base+slot_next*STAGE; load_stage(sm,st,A,aoff,lda,nxt*BK,rowsA,red,A_K); load_stage(sm,st+TILE,B,boff,ldb,nxt*BK,rowsB,red,B_K)
            ta=base+(kt%STAGES)*STAGE; tb=ta+TILE
            for wg in range(2):
                for kk in range(BK//16):
                    if A_K: Am=read_op(sm, ta+wg*64*128+kk*32, 16, 1024, True, 64)
                    else: Am=read_op(sm, ta+wg*MN_BLOCK+kk*2048, MN_BLOCK, 1024, False, 64)
                    if B_K: Bm=read_op(sm, tb+kk*32, 16, 1024, True, 128)
                    else: Bm=read_op(sm, tb+kk*2048, MN_BLOCK, 1024, False, 128)
                    assert not np.isnan(Am).any() and not np.isnan(Bm).any()
                    acc[wg]+=Am@Bm.T
        return acc
    def store(acc, C, coff, ldc, rows, cols, accumulate):
        for tid in range(THREADS):
            wg=tid>>7; w=(tid>>5)&3; lane=tid&31
            for j in range(16):
                for h in range(2):
                    i=wg*64+w*16+(lane>>2)+8*h; col=8*j+2*(lane&3)
                    if i>=rows or col>=cols: continue
                    # thread's registers acc[4j+2h], acc[4j+2h+1] = D[16w+g+8h][8j+2t+{0,1}] of its warpgroup
                    v0=acc[wg][16*w+(lane>>2)+8*h][8*j+2*(lane&3)]; v1=acc[wg][16*w+(lane>>2)+8*h][8*j+2*(lane&3)+1]
                    idx=coff+i*ldc+col; assert 0<=idx and idx+2<=C.size
                    if accumulate: C[idx]+=v0; C[idx+1]+=v1
                    else: C[idx]=v0; C[idx+1]=v1
    def find_row_tile(off,E,M,t):
        base=off[0]
        for x in range(E):
            s=min(max(off[x]-base,0),M); en=min(max(off[x+1]-base,s),M); tiles=(en-s+BM-1)//BM
            if t<tiles: return x,s+t*BM,en
            t-=tiles
    def run(counts,K,N,base):
        rng=np.random.default_rng(2); E=len(counts); M=sum(counts)
        off=[base]; [off.append(off[-1]+c) for c in counts]; st=[o-base for o in off]
        X=rng.integers(-3,4,(M,K)).astype(float); dY=rng.integers(-3,4,(M,N)).astype(float)
        W=[rng.integers(-3,4,(N,K)).astype(float) for _ in counts]; G0=[rng.integers(-3,4,(N,K)).astype(float) for _ in counts]
        Y=np.full(M*N,np.nan); dX=np.full(M*K,np.nan)
        for by in range((M+BM-1)//BM+E):
            f=find_row_tile(off,E,M,by)
            if f is None: continue
            e,row0,rowEnd=f
            for bx in range((N+BN-1)//BN):
                j0=bx*BN; store(mainloop(G(X),row0*K,K,rowEnd-row0,G(W[e]),j0*K,K,N-j0,K,True,True),Y,row0*N+j0,N,rowEnd-row0,N-j0,False)
            for bx in range((K+BN-1)//BN):
                j0=bx*BN; store(mainloop(G(dY),row0*N,N,rowEnd-row0,G(W[e]),j0,K,K-j0,N,True,False),dX,row0*K+j0,K,rowEnd-row0,K-j0,False)
        assert np.array_equal(Y.reshape(M,N), np.concatenate([X[st[e]:st[e+1]]@W[e].T for e in range(E)])), 'fwd'
        assert np.array_equal(dX.reshape(M,K), np.concatenate([dY[st[e]:st[e+1]]@W[e] for e in range(E)])), 'dX'
        Gs=[g.copy().ravel() for g in G0]
        for e in range(E):
            s=st[e]; en=st[e+1]
            if en==s: continue
            for by in range((N+BM-1)//BM):
                for bx in range((K+BN-1)//BN):
                    i0=by*BM; j0=bx*BN
                    store(mainloop(G(dY),s*N+i0,N,N-i0,G(X),s*K+j0,K,K-j0,en-s,False,False),Gs[e],i0*K+j0,K,N-i0,K-j0,True)
        for e in range(E): assert np.array_equal(Gs[e].reshape(N,K), G0[e]+dY[st[e]:st[e+1]].T@X[st[e]:st[e+1]]), f'dW {e}'
        print('ok',counts,K,N,base)
    return run


TMA_MUT = set()  # planted bugs of the tma replay (names in TMA_MUTATIONS; --mutations)


def tma():
    """The TMA forward and dX kernels (grouped_gemm_tma.cu: persistent CTAs); returns run(counts, K, N, base, grid, tail)."""
    BM=128; BN=256; BK=64; STAGES=4; CONSUMER_WARPS=8
    A_BYTES=BM*BK*2; B_BYTES=BN*BK*2; STAGE=A_BYTES+B_BYTES; FWD_PIECE=128*BK*2; DX_PIECE=BK*64*2
    def sw(addr): return addr ^ (((addr>>7)&7)<<4)
    def box(sm, dst, T, c0, c1, rows):
        # the copy engine: box (64 innermost, rows) of the 2-D tensor T[dim1][dim0] at (c0, c1);
        # element (x, y) at dst + y*128 + 2x under the 128-byte swizzle; outside T: zeros
        assert dst%1024==0 and c0>=0 and c1>=0
        y, x = np.meshgrid(np.arange(rows), np.arange(64), indexing='ij')
        r, c = c1+y, c0+x
        inside = (r<T.shape[0]) & (c<T.shape[1])
        v = np.zeros((rows, 64)); v[inside] = T[r[inside], c[inside]]
        sm[sw(dst+y*128+2*x)//2] = v
        return 64*rows*2
    def read_op(sm, start, lbo, sbo, kmajor, R):
        x, k = np.meshgrid(np.arange(R), np.arange(16), indexing='ij')
        if kmajor: a = start+(x//8)*sbo+(x%8)*128+k*2
        else: a = start+(x//64)*lbo+(k//8)*sbo+(k%8)*128+(x%64)*2
        return sm[sw(a)//2]
    def expert_rows(off, x, M):
        s=min(max(off[x]-off[0],0),M); return s, min(max(off[x+1]-off[0],s),M)
    def find_row_tile(off,E,M,t):
        # ggc::find_row_tile as grouped_gemm.cu uses it: a scan from expert 0
        for x in range(E):
            s,en=expert_rows(off,x,M); tiles=(en-s+BM-1)//BM
            if t<tiles: return x,s+t*BM,en
            t-=tiles
    class RowTileCursor:  # ggc::RowTileCursor: resumes at the expert the previous call stopped at
        def __init__(c): c.x=0; c.first=0
        def find(c, off, E, M, t):
            while c.x<E:
                s,en=expert_rows(off,c.x,M); tiles=(en-s+BM-1)//BM
                if t-c.first<tiles: return c.x, s+(t-c.first)*BM, en
                if 'cursor_no_advance' not in TMA_MUT: c.first+=tiles
                c.x+=1
            return None
    def walk(b, G, off, E, M, width):
        # GemmWalk: CTA b's tiles (e, row0, rowEnd, j0, cols); round r, tile r·G + (b + r) mod G
        gx=(width+BN-1)//BN; total=gx*((M+BM-1)//BM+E); cur=RowTileCursor(); r=0
        while True:
            u=r*G+(b+r)%G+(1 if 'tile_index_plus_1' in TMA_MUT else 0); r+=1
            if u>=total: return
            y=u//gx; j0=(u-y*gx)*BN
            f=cur.find(off,E,M,y)
            assert f==find_row_tile(off,E,M,y), ('the cursor and a scan from expert 0 differ', y)
            if f is None: return
            yield u, f[0], f[1], f[2], j0, min(BN, width-j0)
    def cta(b, G, Amat, W, out, writes, off, E, M, width, red, B_K, rng):
        """CTA b: the producer thread and both consumer warpgroups as coroutines, run in a random
        interleaving, moving real data through the ring into `out` (writes: stores per element)."""
        ktiles=red//BK
        sm=np.full(STAGES*STAGE//2, np.nan)
        # a barrier: completed phases and arrivals pending in the current one
        full=[[0,0] for _ in range(STAGES)]; empty=[[0,0] for _ in range(STAGES)]
        def arrive(bar, count):
            bar[1]+=1
            if bar[1]==count: bar[0]+=1; bar[1]=0
        def passes(bar, parity): return (bar[0]&1)!=parity  # try_wait.parity: that phase has completed
        holds=[None]*STAGES        # ring position whose copies a stage holds
        reading=[set(), set()]     # positions whose wgmma group is in flight, per consumer warpgroup
        def producer():
            p_width = red if 'producer_gx_from_red' in TMA_MUT else width
            it=0; acquired=-1; visible=set()  # maps fenced for the copy engine by this CTA
            for _, e, row0, rowEnd, j0, cols in walk(b, G, off, E, M, p_width):
                if e!=acquired and not ('acquire_once' in TMA_MUT and acquired>=0):
                    visible.add(e); acquired=e
                pieces=(2 if B_K else 4)>>(1 if cols<=BN//2 else 0)
                expect=A_BYTES+(B_BYTES if 'expect_full_b' in TMA_MUT else pieces*(FWD_PIECE if B_K else DX_PIECE))
                for kt in range(ktiles):
                    pos = kt if 'it_per_tile' in TMA_MUT else it
                    s=pos%STAGES
                    if 'parity_from_kt' in TMA_MUT:
                        if kt>=STAGES:
                            while not passes(empty[s], (kt//STAGES-1)&1): yield
                    elif pos>=STAGES:
                        while not passes(empty[s], (pos//STAGES-1)&1): yield
                    assert all(x%STAGES!=s for r in reading for x in r), ('refill under a wgmma', it)
                    assert e in visible, ('copy through a weight map not acquired by this CTA', e)
                    holds[s]=pos; ta=s*STAGE; tb=ta+A_BYTES
                    sm[ta//2:(ta+STAGE)//2]=np.nan  # what the stage held before is never read
                    yield  # the copies land later
                    got=box(sm, ta, Amat, kt*BK, row0, 128)
                    for p in range(pieces):
                        got+=box(sm, tb+p*FWD_PIECE, W[e], kt*BK, j0+128*p, 128) if B_K else box(sm, tb+p*DX_PIECE, W[e], j0+64*p, kt*BK, 64)
                    assert got==expect, ('expect_tx', got, expect)
                    arrive(full[s], 1)  # arrive.expect_tx plus the bytes: one completion
                    it+=1
        def consumer(half):
            it=0
            for _, e, row0, rowEnd, j0, cols in walk(b, G, off, E, M, width):
                WN=128 if cols<=BN//2 else 256
                if 'consumer_skips_narrow' in TMA_MUT and WN==128: continue
                acc=np.zeros((64,256))
                if 'it_per_tile' in TMA_MUT: it=0
                for kt in range(ktiles):
                    s=it%STAGES
                    while not passes(full[s], (it//STAGES)&1): yield
                    assert holds[s]==it, ('stage read before its copies', it, holds[s])
                    ta=s*STAGE+half*64*128; tb=s*STAGE+A_BYTES
                    for kk in range(BK//16):  # the group's wgmmas (they read the stage while in flight)
                        Am=read_op(sm, ta+kk*32, 16, 1024, True, 64)
                        Bm=read_op(sm, tb+kk*32, 16, 1024, True, WN) if B_K else read_op(sm, tb+kk*2048, DX_PIECE, 1024, False, WN)
                        assert not np.isnan(Am).any() and not np.isnan(Bm).any(), ('read an unwritten stage byte', it)
                        acc[:, :WN]+=Am@Bm.T
                    reading[half].add(it)
                    yield
                    reading[half].discard(it-1)  # wait_group 1: group it − 1 is done
                    release = it if 'release_current' in TMA_MUT else it-1
                    if kt>0 or 'release_current' in TMA_MUT:
                        for _ in range(4): arrive(empty[release%STAGES], CONSUMER_WARPS)  # lane 0 of each warp
                    it+=1
                    yield
                reading[half].clear()  # wait_group 0, then the tile's last stage
                if ktiles>0 and not {'no_last_release','release_current'} & TMA_MUT:
                    for _ in range(4): arrive(empty[(it-1)%STAGES], CONSUMER_WARPS)
                store(acc, half, out, writes, row0, j0, width, rowEnd-row0, cols)
                yield
        live=[producer(), consumer(0), consumer(1)]; steps=0
        while live:
            a=live[rng.integers(len(live))]
            try: next(a)
            except StopIteration: live.remove(a)
            steps+=1; assert steps<200000, ('deadlock', b)
        # every stage filled as often as it was given back: the ring ends empty
        assert all(f==[n,0] and e==[n,0] for f,e,n in ((full[s],empty[s],full[s][0]) for s in range(STAGES))), ('ring not drained', full, empty)
    def store(acc, half, C, writes, row0, j0, width, rows, cols):
        # store_tile, beta 0: thread tid of the warpgroup, rows i < rows and column pairs col < cols
        tid=np.arange(128)[:,None,None]; h=np.arange(2)[None,:,None]; j=np.arange(32)[None,None,:]
        w=tid>>5; lane=tid&31
        i=half*64+w*16+(lane>>2)+8*h; col=8*j+2*(lane&3); ar=16*w+(lane>>2)+8*h
        i,col,ar=np.broadcast_arrays(i,col,ar)
        keep=(i<rows)&(col<cols); i,col,ar=i[keep],col[keep],ar[keep]
        idx=(row0+i)*width+j0+col
        assert (idx>=0).all() and (idx+2<=C.size).all()
        C[idx]=acc[ar,col]; C[idx+1]=acc[ar,col+1]
        np.add.at(writes, idx, 1); np.add.at(writes, idx+1, 1)
    def run(counts,K,N,base,grid,tail=0,trials=8):
        # tail: rows after the last expert's, in the tensors but in no expert (never stored)
        rng=np.random.default_rng(3); E=len(counts); M=sum(counts)+tail
        off=[base]; [off.append(off[-1]+c) for c in counts]; st=[o-base for o in off]; cov=st[-1]
        X=rng.integers(-3,4,(M,K)).astype(float); dY=rng.integers(-3,4,(M,N)).astype(float)
        W=[rng.integers(-3,4,(N,K)).astype(float) for _ in counts]
        for name, Amat, width, red, B_K, ref in (
                ('fwd', X, N, K, True, np.concatenate([X[st[e]:st[e+1]]@W[e].T for e in range(E)])),
                ('dX', dY, K, N, False, np.concatenate([dY[st[e]:st[e+1]]@W[e] for e in range(E)]))):
            tiles=((width+BN-1)//BN)*((M+BM-1)//BM+E); G=min(tiles, grid)  # the launcher's grid
            # the CTAs' walks: every tile of a row tile once, none past the last row tile
            row_tiles=sum((c+BM-1)//BM for c in counts)
            walked=sorted(u for b in range(G) for u,*_ in walk(b, G, off, E, M, width))
            assert walked==list(range(row_tiles*((width+BN-1)//BN))), (name, 'tiles taken twice or missed')
            for trial in range(trials):
                out=np.full(M*width, np.nan); writes=np.zeros(M*width, dtype=int)
                for b in range(G): cta(b, G, Amat, W, out, writes, off, E, M, width, red, B_K, rng)
                out=out.reshape(M,width); writes=writes.reshape(M,width)
                assert np.isnan(out[cov:]).all(), (name, 'rows in no expert were stored')
                assert (writes[:cov]==1).all(), (name, 'an element stored', int(writes[:cov].min()), 'to', int(writes[:cov].max()), 'times')
                assert np.array_equal(out[:cov], ref), (name, 'differs from numpy')
        print('ok',counts,K,N,base,'grid',grid,'tail',tail)
    return run


def tma_suite():
    run = tma()
    # Zero-row experts, a 1-row expert, row tails, rows in no expert, offsets from 1000; forward
    # width 320 (a wide tile and a narrow one of 64) over 3 k-steps, dX width 192 (wide, 64 zero
    # columns) over 5; 3 CTAs for 10 and 5 tiles of 14 and 7 slots.
    run([0, 1, 130, 7, 64], 192, 320, 1000, grid=3, tail=9)
    # Forward of one k-step a tile (tiles end at every stage and parity), dX of two; narrow tiles only.
    run([3, 0, 129], 64, 128, 0, grid=2)
    # Three column tiles (256, 256, narrow 128), dX over 10 k-steps.
    run([2, 129], 128, 640, 5, grid=4)
    # Many experts, most of one row tile or none, one k-step a forward tile: each of 3 CTAs walks
    # 4-8 tiles across experts (its weight map changing from tile to tile), the ring wrapping often.
    run([5, 0, 200, 0, 0, 64, 1, 300, 0, 128, 129, 2], 64, 448, 0, grid=3, tail=3)
    # Runs of zero-row experts between multi-tile ones; dX over three column tiles (the last of
    # 128); 5 CTAs for 16 and 24 tiles.
    run([0, 300, 0, 1, 0, 257, 0, 0, 64], 640, 320, 2, grid=5, tail=1)
    # More CTAs asked for than tiles: the launcher's min, one tile each.
    run([40], 128, 192, 7, grid=64, trials=1)


TMA_MUTATIONS = {
    'no_last_release': "a tile's last stage is never given back",
    'release_current': 'the stage the in-flight wgmma group reads is given back',
    'parity_from_kt': "the producer's empty wait from the tile's own k-step, not the ring position",
    'it_per_tile': 'the ring position restarts at every tile (stage and parity not carried)',
    'acquire_once': "only the CTA's first expert's weight map is acquired",
    'producer_gx_from_red': "the producer's tile list from the reduction's width (the sides walk different tiles)",
    'consumer_skips_narrow': 'the consumers skip narrow column tiles, the producer does not',
    'tile_index_plus_1': 'the tile index off by one on both sides',
    'cursor_no_advance': "the row-tile cursor does not count the tiles of the experts it passes",
    'expect_full_b': 'expect_tx of the whole B tile on a narrow tile',
}


def tma_mutations():
    from planted_bugs import check_planted
    check_planted(TMA_MUTATIONS, TMA_MUT, tma_suite)


if __name__ == '__main__':
    import sys
    if '--mutations' in sys.argv:
        tma_mutations()
        sys.exit()
    for name, model in (('mma', mma), ('wgmma', wgmma)):
        run = model()
        print(name)
        run([0, 1, 130, 7, 64], 192, 320, 1000)
        run([3, 0, 330], 64, 128, 0)
    print('tma')
    tma_suite()
