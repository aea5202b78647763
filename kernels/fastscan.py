"""PQ fast scan (André, Kermarrec & Le Scouarnec's PQFastScan idea): 4-bit PQ codes scanned 32
rows at a time with in-register table look-ups.

A list's rows are stored in blocks of 32: for sub-vector pair p, 32 bytes, byte r holding row
r's code of sub-vector 2p (low nibble) and 2p+1 (high nibble); lists are padded to whole
blocks. A query's float32 tables (16 entries per sub-vector) are quantised to uint8, so one
table is 16 bytes, and the look-up of 32 rows' codes in it is one byte shuffle (AVX2
``vpshufb``), summed in uint16 lanes. Numba has no shuffle of its own, so ``block_below``
is written in LLVM IR around the ``llvm.x86.avx2.pshuf.b`` intrinsic; machines without AVX2
run a scalar kernel with the same results. The uint16 sums rank rows only approximately
(each table entry is rounded to 1/255 of the largest table's span), which is why fast scan
is meant to feed a ``Refine`` re-ranking.
"""

import llvmlite.binding as llb
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from . import INLINE, JIT
from .bitset import bitset_test
from .pq import _list_bias, _table, nearest_probes
from .topk import heap_sorted, select_smallest

BLOCK = 32
"""Rows per block: one AVX2 register of bytes."""
SUM_LIMIT = 32767
"""Sums stay below this (signed 16-bit compares), so a table entry is at most
``min(255, (SUM_LIMIT - 1) // m)``."""

RESERVOIR = 2
"""Candidates are collected in a buffer of this many times k (refilled by a selection when
full) rather than a heap: a push per candidate costs more than the scan of its block."""

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V32I8, _V16I8, _V32I16 = ir.VectorType(_I8, 32), ir.VectorType(_I8, 16), ir.VectorType(_I16, 32)


def _has_avx2() -> bool:
    """Kernels compile for the host CPU unless NUMBA_CPU_NAME says otherwise (a portable
    build must not use the shuffle)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llb.get_host_cpu_features().get("avx2"))
    except Exception:  # not an x86 host
        return False


HAVE_AVX2 = _has_avx2()


@intrinsic
def _block_below_avx2(typingctx, blocks, base, lut, thr, acc):
    """Sum the tables over the 32 rows of the block at ``blocks[base:]`` into ``acc``
    (uint16[32]); return the bit mask of rows whose sum is below ``thr``."""
    sig = types.int64(blocks, base, lut, thr, acc)

    def codegen(context, builder, signature, args):
        b_ary = context.make_array(signature.args[0])(context, builder, args[0])
        l_ary = context.make_array(signature.args[2])(context, builder, args[2])
        o_ary = context.make_array(signature.args[4])(context, builder, args[4])
        nbytes = cgutils.unpack_tuple(builder, l_ary.shape, 1)[0]
        npairs = builder.udiv(nbytes, ir.Constant(nbytes.type, BLOCK))
        bptr = builder.bitcast(b_ary.data, _I8.as_pointer())
        lptr = builder.bitcast(l_ary.data, _I8.as_pointer())
        shuffle = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V32I8, [_V32I8, _V32I8]), "llvm.x86.avx2.pshuf.b")
        acc_p = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, None))
        nibble = ir.Constant(_V32I8, [0x0F] * 32)
        four = ir.Constant(_V32I8, [4] * 32)
        both_lanes = ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2)
        base_v = builder.sext(args[1], ir.IntType(64)) if args[1].type.width < 64 else args[1]
        with cgutils.for_range(builder, npairs) as loop:
            off = builder.mul(loop.index, ir.Constant(loop.index.type, BLOCK))
            at = builder.gep(bptr, [builder.add(base_v, off)])
            c = builder.load(builder.bitcast(at, _V32I8.as_pointer()), align=1)
            lo = builder.and_(c, nibble)
            hi = builder.and_(builder.lshr(c, four), nibble)
            t0 = builder.load(builder.bitcast(builder.gep(lptr, [off]), _V16I8.as_pointer()),
                              align=1)
            off16 = builder.add(off, ir.Constant(off.type, 16))
            t1 = builder.load(builder.bitcast(builder.gep(lptr, [off16]), _V16I8.as_pointer()),
                              align=1)
            a = builder.call(shuffle, [builder.shuffle_vector(t0, t0, both_lanes), lo])
            b = builder.call(shuffle, [builder.shuffle_vector(t1, t1, both_lanes), hi])
            s = builder.add(builder.load(acc_p), builder.zext(a, _V32I16))
            builder.store(builder.add(s, builder.zext(b, _V32I16)), acc_p)
        total = builder.load(acc_p)
        builder.store(total, builder.bitcast(o_ary.data, _V32I16.as_pointer()), align=1)
        t = builder.trunc(args[3], _I16) if args[3].type.width > 16 else args[3]
        limit = builder.insert_element(ir.Constant(_V32I16, None), t, ir.Constant(_I32, 0))
        limit = builder.shuffle_vector(limit, limit, ir.Constant(ir.VectorType(_I32, 32),
                                                                 [0] * 32))
        below = builder.bitcast(builder.icmp_signed("<", total, limit), _I32)
        return builder.zext(below, ir.IntType(64))

    return sig, codegen


@njit(**INLINE)
def _block_below_scalar(blocks, base, lut, thr, acc):
    """``_block_below_avx2`` without the shuffle (same sums, same mask)."""
    for r in range(BLOCK):
        acc[r] = 0
    for p in range(lut.shape[0] // BLOCK):
        at = base + p * BLOCK
        t = p * BLOCK
        for r in range(BLOCK):
            c = blocks[at + r]
            acc[r] += np.uint16(lut[t + (c & 15)]) + np.uint16(lut[t + 16 + (c >> 4)])
    mask = np.int64(0)
    for r in range(BLOCK):
        if np.int64(acc[r]) < thr:
            mask |= np.int64(1) << r
    return mask


block_below = _block_below_avx2 if HAVE_AVX2 else _block_below_scalar


@njit(**INLINE)
def quantize_tables(lutf, lut8) -> tuple:
    """uint8 tables ``lut8`` from float32 ``lutf`` (16 entries per sub-vector): each table
    minus its minimum, all scaled by one factor so the largest span maps to the entry limit.
    Returns (sum of the minima, 1 / factor): distance ~ sum + acc / factor."""
    m = lutf.shape[0] // 16
    top = min(255, (SUM_LIMIT - 1) // m)
    span = np.float32(0.0)
    summin = np.float32(0.0)
    for j in range(m):
        lo = lutf[j * 16]
        hi = lo
        for i in range(1, 16):
            v = lutf[j * 16 + i]
            lo = min(lo, v)
            hi = max(hi, v)
        span = max(span, hi - lo)
        summin += lo
    a = np.float32(top) / span if span > 0 else np.float32(1.0)
    for j in range(m):
        lo = lutf[j * 16]
        for i in range(1, 16):
            lo = min(lo, lutf[j * 16 + i])
        for i in range(16):
            lut8[j * 16 + i] = np.uint8(min(np.float32(top),
                                            (lutf[j * 16 + i] - lo) * a + np.float32(0.5)))
    return summin, np.float32(1.0) / a


@njit(**INLINE)
def _scan_list(lut8, shift, inv_a, blocks, b0, a, e, slot_pos, words, filtered, acc, rd, ri,
               count, thr, k) -> tuple:
    """Rows in slots [a, e) of a list whose blocks start at block ``b0``; a row's distance is
    ``shift + acc * inv_a``. Rows below ``thr`` are appended to the reservoir (rd, ri); when
    it is full the best k are kept and ``thr`` drops to the worst of them. Returns the new
    (count, thr)."""
    stride = lut8.shape[0]  # bytes of one block: BLOCK per pair
    cap = rd.shape[0]
    s = a
    blk = b0
    while s < e:
        t = (thr - shift) / inv_a
        limit = 0 if t <= 0 else (SUM_LIMIT if t >= SUM_LIMIT else np.int64(np.ceil(t)))
        mask = block_below(blocks, np.int64(blk * stride), lut8, np.int64(limit), acc)
        rows = min(BLOCK, e - s)
        if rows < BLOCK:
            mask &= (np.int64(1) << rows) - 1
        while mask != 0:
            r = np.int64(trailing_zeros(mask))
            mask &= mask - 1
            d = shift + np.float32(acc[r]) * inv_a
            if d < thr:
                p = slot_pos[s + r]
                if filtered and not bitset_test(words, p):
                    continue
                rd[count] = d
                ri[count] = p
                count += 1
                if count == cap:
                    thr = select_smallest(rd, ri, count, k)
                    count = k
        s += BLOCK
        blk += 1
    return count, thr


@njit(**INLINE)
def _search_query(q, books_t, scale, probes, bases, cnorms, tabs, l2, blocks, block_off,
                  offsets, slot_pos, words, filtered, lutf, lut0, lut8, acc, rd, ri, k, ordered,
                  out_d, out_i) -> None:
    """Top-k of one query over its probed lists into (out_d, out_i), -1 padded: sorted when
    ``ordered`` (the sort of 96 hits costs a quarter of the scan that found them)."""
    _table(q, books_t, scale, lut0)
    qnorm = np.float32(0.0)
    for t in range(q.shape[0]):
        qnorm += q[t] * q[t]
    summin, inv_a = np.float32(0.0), np.float32(1.0)
    if not l2:
        summin, inv_a = quantize_tables(lut0, lut8)
    count = 0
    thr = np.float32(np.inf)
    for t in range(probes.shape[0]):
        lst = probes[t]
        if lst < 0:
            continue
        if l2:
            tab = tabs[lst]
            for i in range(lutf.shape[0]):
                lutf[i] = lut0[i] + tab[i]
            summin, inv_a = quantize_tables(lutf, lut8)
        bias = _list_bias(q, qnorm, bases, cnorms, lst, l2)
        count, thr = _scan_list(lut8, bias + summin, inv_a, blocks, block_off[lst],
                                offsets[lst], offsets[lst + 1], slot_pos, words, filtered, acc,
                                rd, ri, count, thr, k)
    if count > k:
        select_smallest(rd, ri, count, k)
        count = k
    if ordered:
        heap_sorted(rd, ri, count, out_d, out_i)
        return
    for t in range(k):
        out_d[t] = rd[t] if t < count else np.inf
        out_i[t] = ri[t] if t < count else -1


@njit(**JIT)
def search_chunk(Q, books_t, scale, probes, bases, cnorms, tabs, l2, blocks, block_off,
                 offsets, slot_pos, words, filtered, ordered, out_d, out_i, first, step) -> None:
    """Queries first, first + step, ... of a batch, each over its row of ``probes`` (lists'
    biases from their ``bases``)."""
    k = out_d.shape[1]
    w = books_t.shape[0] * books_t.shape[2]
    lutf = np.empty(w, np.float32)
    lut0 = np.empty(w, np.float32)
    lut8 = np.empty(w, np.uint8)
    acc = np.empty(BLOCK, np.uint16)
    rd = np.empty(RESERVOIR * k, np.float32)
    ri = np.empty(RESERVOIR * k, np.int64)
    for q in range(first, Q.shape[0], step):
        _search_query(Q[q], books_t, scale, probes[q], bases, cnorms, tabs, l2, blocks,
                      block_off, offsets, slot_pos, words, filtered, lutf, lut0, lut8, acc, rd,
                      ri, k, ordered, out_d[q], out_i[q])


@njit(**JIT)
def search_one(q, books_t, scale, centroids, bases, cnorms, nprobe, tabs, l2, blocks, block_off,
               offsets, slot_pos, words, filtered, ordered, out_d, out_i) -> None:
    """One query over its ``nprobe`` nearest lists (chosen here by ``centroids``; ``bases``
    give their biases)."""
    probes = nearest_probes(q, centroids, cnorms, l2, nprobe)
    w = books_t.shape[0] * books_t.shape[2]
    k = out_d.shape[0]
    _search_query(q, books_t, scale, probes, bases, cnorms, tabs, l2, blocks, block_off, offsets,
                  slot_pos, words, filtered, np.empty(w, np.float32), np.empty(w, np.float32),
                  np.empty(w, np.uint8), np.empty(BLOCK, np.uint16),
                  np.empty(RESERVOIR * k, np.float32), np.empty(RESERVOIR * k, np.int64), k,
                  ordered, out_d, out_i)
