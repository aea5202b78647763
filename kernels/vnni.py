"""AVX-512 VNNI: a dot product of unsigned 8-bit codes with signed 8-bit query values, 64 of
each per instruction (``vpdpbusd``: four byte products summed into each of 16 int32 lanes).

An LVQ-8 distance widens its codes to float32 and multiplies them by a float32 query: 24
widenings, 24 conversions and 24 fused multiply-adds for a 384-d row. With the query
quantized to int8 (``engine/codecs.py``, ``LVQCodec``) the row is six ``vpdpbusd`` and a
reduction. A traversal waits on memory more than it computes, so HNSW16,LVQ8 on WordNet gained
1.03-1.09x (IVF1024,LVQ8 batches 1.04-1.10x). Numba has no VNNI, so this emits LLVM's
``llvm.x86.avx512.vpdpbusd.512``; only hosts whose CPU has ``avx512vnni`` may call it
(``HAS_VNNI``), and only their kernels compile it: elsewhere LLVM cannot select it. Sums stay
exact in int32 below 66,000 dimensions (255 * 127 a product).
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK = 64
"""Bytes one ``vpdpbusd`` reads of each operand."""


def _host_has_vnni() -> bool:
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx512vnni", False))
    except RuntimeError:  # features unknown: the portable kernels
        return False


HAS_VNNI = _host_has_vnni()
USE_VNNI = HAS_VNNI and os.environ.get("QUIVER_VNNI", "1") != "0"
"""Whether LVQ-8 codecs prepare int8 queries for the VNNI kernels: on a VNNI host unless
``QUIVER_VNNI=0`` (float32 queries, as elsewhere: for comparisons)."""

_V16 = ir.VectorType(ir.IntType(32), 16)


def _vpdpbusd(builder: ir.IRBuilder, acc, a, b):
    """acc + (u8 a) . (s8 b) per int32 lane. Declared with the <16 x i32> byte operands of
    LLVM 14-20, which LLVM 21+ (<64 x i8>) upgrades on its own (checked with LLVM 22)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                        "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(fn, [acc, a, b])


def _byte_arrays(codes, query) -> bool:
    """Whether both operands type as 1-D C-contiguous arrays (their bytes are what is read)."""
    return (isinstance(codes, types.Array) and isinstance(query, types.Array)
            and codes.ndim == 1 and query.ndim == 1 and codes.layout == "C"
            and query.layout == "C")


def _operands(context, builder, signature, args):
    """(codes pointer, query pointer, count as intp, intp type) of an intrinsic's arguments."""
    cty, qty, nty = signature.args
    c = context.make_array(cty)(context, builder, args[0])
    q = context.make_array(qty)(context, builder, args[1])
    i8p = ir.IntType(8).as_pointer()
    return (builder.bitcast(c.data, i8p), builder.bitcast(q.data, i8p),
            context.cast(builder, args[2], nty, types.intp), context.get_value_type(types.intp))


def _load(builder, ptr, off):
    """The 64 bytes at ``ptr + off`` as <16 x i32>, unaligned."""
    return builder.load(builder.bitcast(builder.gep(ptr, [off]), _V16.as_pointer()), align=1)


def _masked_loader(builder, off, rest, intp):
    """A loader of the ``rest`` (< 64) bytes at ``ptr + off`` as <16 x i32>, zeros after
    them: a masked load, which reads no byte past them."""
    i64 = ir.IntType(64)
    wide = builder.zext(rest, i64) if intp.width < 64 else rest
    bits = builder.sub(builder.shl(ir.Constant(i64, 1), wide), ir.Constant(i64, 1))
    mask = builder.bitcast(bits, ir.VectorType(ir.IntType(1), 64))
    v64 = ir.VectorType(ir.IntType(8), 64)
    masked = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v64, [v64.as_pointer(), ir.IntType(32), mask.type, v64]),
        "llvm.masked.load.v64i8.p0v64i8")

    def tail(ptr):
        p = builder.bitcast(builder.gep(ptr, [off]), v64.as_pointer())
        got = builder.call(masked, [p, ir.Constant(ir.IntType(32), 1), mask,
                                    ir.Constant(v64, None)])
        return builder.bitcast(got, _V16)

    return tail


def _sum_lanes(builder, acc0, acc1):
    """The int64 sum of the int32 lanes of two accumulators."""
    total = builder.add(builder.load(acc0), builder.load(acc1))
    red = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), [_V16]),
                                         "llvm.vector.reduce.add.v16i32")
    return builder.sext(builder.call(red, [total]), ir.IntType(64))


@intrinsic
def dot_u8s8(typingctx, codes, query, nbytes):
    """sum_j codes[j] * query[j] over the first ``nbytes`` bytes of two 1-D C-contiguous
    arrays, read as unsigned (codes) and signed (query) bytes whatever their dtypes, as
    int64: 64-byte blocks on two accumulators (hiding the instruction's latency), then the
    rest by masked loads, which read no byte past ``nbytes``."""
    if not _byte_arrays(codes, query):
        return None
    sig = types.int64(codes, query, nbytes)

    def codegen(context, builder, signature, args):
        cp, qp, n, intp = _operands(context, builder, signature, args)
        acc0 = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))
        acc1 = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))

        def block(index, acc):
            off = builder.mul(index, ir.Constant(intp, BLOCK))
            builder.store(_vpdpbusd(builder, builder.load(acc), _load(builder, cp, off),
                                    _load(builder, qp, off)), acc)

        blocks = builder.udiv(n, ir.Constant(intp, BLOCK))
        with cgutils.for_range(builder, builder.lshr(blocks, ir.Constant(intp, 1))) as loop:
            two = builder.shl(loop.index, ir.Constant(intp, 1))
            block(two, acc0)
            block(builder.add(two, ir.Constant(intp, 1)), acc1)
        with builder.if_then(builder.trunc(blocks, ir.IntType(1))):  # an odd block count
            block(builder.sub(blocks, ir.Constant(intp, 1)), acc0)
        rest = builder.urem(n, ir.Constant(intp, BLOCK))
        with builder.if_then(builder.icmp_unsigned("!=", rest, ir.Constant(intp, 0))):
            tail = _masked_loader(builder, builder.mul(blocks, ir.Constant(intp, BLOCK)), rest,
                                  intp)
            builder.store(_vpdpbusd(builder, builder.load(acc1), tail(cp), tail(qp)), acc1)
        return _sum_lanes(builder, acc0, acc1)

    return sig, codegen


@intrinsic
def dot_u4s8(typingctx, codes, query, half):
    """sum_j lo(codes[j]) * query[j] + hi(codes[j]) * query[half + j] over the first ``half``
    bytes of ``codes``: packed 4-bit codes (byte j holds dimension j in its low nibble and
    half + j in its high one, LVQ-4's layout) against signed bytes, as int64. The nibbles
    are split in registers (``and``, ``lshr``), so each half of the query is one contiguous
    ``vpdpbusd`` operand: a 64-byte block of codes is two instructions; the rest of a block
    by masked loads, which read no byte past either half."""
    if not _byte_arrays(codes, query):
        return None
    sig = types.int64(codes, query, half)

    def codegen(context, builder, signature, args):
        cp, qp, h, intp = _operands(context, builder, signature, args)
        qhp = builder.gep(qp, [h])
        low = ir.Constant(_V16, [0x0F0F0F0F] * 16)
        four = ir.Constant(_V16, [4] * 16)
        acc0 = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))
        acc1 = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))

        def both(v, a, b):  # the low nibbles against a, the high ones against b
            lo = builder.and_(v, low)
            hi = builder.and_(builder.lshr(v, four), low)
            builder.store(_vpdpbusd(builder, builder.load(acc0), lo, a), acc0)
            builder.store(_vpdpbusd(builder, builder.load(acc1), hi, b), acc1)

        blocks = builder.udiv(h, ir.Constant(intp, BLOCK))
        with cgutils.for_range(builder, blocks) as loop:
            off = builder.mul(loop.index, ir.Constant(intp, BLOCK))
            both(_load(builder, cp, off), _load(builder, qp, off), _load(builder, qhp, off))
        rest = builder.urem(h, ir.Constant(intp, BLOCK))
        with builder.if_then(builder.icmp_unsigned("!=", rest, ir.Constant(intp, 0))):
            tail = _masked_loader(builder, builder.mul(blocks, ir.Constant(intp, BLOCK)), rest,
                                  intp)
            both(tail(cp), tail(qp), tail(qhp))
        return _sum_lanes(builder, acc0, acc1)

    return sig, codegen


@intrinsic
def dot16_u8s8(typingctx, queries, blocks, start, k4, out):
    """out[16 r + c] = sum_t sum_b queries[4 k4 r + 4t + b] * blocks[start + 64t + 4c + b]
    for four queries r (unsigned bytes, 4 k4 each, one after another) and the 16 columns c of
    one column block (t < k4): four query bytes broadcast to all lanes against a 64-byte
    block of signed bytes holding four rows of 16 columns, one ``vpdpbusd`` a block and
    query. A block is loaded once for the four queries (from L2: a 384 x 256 matrix is 96 KB,
    streamed once a query it held one query at 1.5 us), and each query sums on two
    accumulators (the instruction's latency hidden). ``project_int8``'s inner product."""
    if not (_byte_arrays(queries, blocks) and isinstance(out, types.Array) and out.ndim == 1
            and out.layout == "C" and out.dtype == types.int32):
        return None
    sig = types.void(queries, blocks, start, k4, out)

    def codegen(context, builder, signature, args):
        qty, bty, sty, kty, oty = signature.args
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        intp = context.get_value_type(types.intp)
        qp = builder.bitcast(context.make_array(qty)(context, builder, args[0]).data, i8p)
        bp = builder.bitcast(context.make_array(bty)(context, builder, args[1]).data, i8p)
        bp = builder.gep(bp, [context.cast(builder, args[2], sty, types.intp)])
        n = context.cast(builder, args[3], kty, types.intp)
        op = builder.bitcast(context.make_array(oty)(context, builder, args[4]).data,
                             _V16.as_pointer())
        stride = builder.shl(n, ir.Constant(intp, 2))
        rows = [builder.gep(qp, [builder.mul(stride, ir.Constant(intp, r))]) for r in range(4)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V16, None)) for _ in range(2)]
                for _ in range(4)]
        undef = ir.Constant(_V16, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

        def step(t, parity):
            block = _load(builder, bp, builder.mul(t, ir.Constant(intp, BLOCK)))
            four = builder.shl(t, ir.Constant(intp, 2))
            for r in range(4):
                word = builder.load(builder.bitcast(builder.gep(rows[r], [four]),
                                                    i32.as_pointer()), align=1)
                splat = builder.shuffle_vector(
                    builder.insert_element(undef, word, ir.Constant(i32, 0)), undef, zeros)
                acc = accs[r][parity]
                builder.store(_vpdpbusd(builder, builder.load(acc), splat, block), acc)

        pairs = builder.lshr(n, ir.Constant(intp, 1))
        with cgutils.for_range(builder, pairs) as loop:
            base = builder.shl(loop.index, ir.Constant(intp, 1))
            step(base, 0)
            step(builder.add(base, ir.Constant(intp, 1)), 1)
        with builder.if_then(builder.trunc(n, ir.IntType(1))):  # an odd k4
            step(builder.sub(n, ir.Constant(intp, 1)), 0)
        for r in range(4):
            total = builder.add(builder.load(accs[r][0]), builder.load(accs[r][1]))
            builder.store(total, builder.gep(op, [ir.Constant(intp, r)]), align=4)
        return context.get_dummy_value()

    return sig, codegen
