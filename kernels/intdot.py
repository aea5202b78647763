"""Integer dot products of uint8 codes with an int8 query on AVX-512 VNNI (``vpdpbusd``: 64
byte products summed into 16 int32 lanes per instruction).

A float32 x uint8 dot product widens every code to float32 first: 384 dimensions cost about
30 ns. With the query quantised to int8 once per search, the same product is six ``vpdpbusd``
and a reduction (about 12 ns), which is what LVQ-8 graph traversal spends most of its compute
on. Numba has no such instruction, so ``u8s8_dot`` is LLVM IR around the intrinsic (as the
fast scan does with ``pshufb``); ``HAVE_VNNI`` says whether the host has it.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import host_has

HAVE_VNNI = host_has("avx512vnni") and host_has("avx512bw")

CHUNK = 64
"""Bytes per ``vpdpbusd``: ``u8s8_dot`` covers the whole chunks; callers add the tail."""

_I8, _I32 = ir.IntType(8), ir.IntType(32)
_V16I32 = ir.VectorType(_I32, 16)


@intrinsic
def u8s8_dot(typingctx, codes, row, qs, word, n):
    """sum_j codes[row, j] (uint8) * q8[j] (int8), exact in int64, for j below
    ``n // CHUNK * CHUNK``, where q8 are the bytes of the float32 array ``qs`` from word
    ``word`` on (a prepared query carries its int8 copy that way). Pointers are computed
    here: slices or views in a distance make Numba count references at every call."""
    if not (isinstance(codes, types.Array) and codes.ndim == 2 and codes.dtype == types.uint8
            and isinstance(qs, types.Array) and qs.ndim == 1 and qs.dtype == types.float32):
        return None
    sig = types.int64(codes, row, qs, word, n)

    def codegen(context, builder, signature, args):
        c_ary = context.make_array(signature.args[0])(context, builder, args[0])
        q_ary = context.make_array(signature.args[2])(context, builder, args[2])
        i64 = ir.IntType(64)
        row_v = context.cast(builder, args[1], signature.args[1], types.int64)
        word_v = context.cast(builder, args[3], signature.args[3], types.int64)
        n_v = context.cast(builder, args[4], signature.args[4], types.int64)
        stride = cgutils.unpack_tuple(builder, c_ary.strides, 2)[0]
        ap = builder.gep(builder.bitcast(c_ary.data, _I8.as_pointer()),
                         [builder.mul(row_v, stride)])
        bp = builder.gep(builder.bitcast(q_ary.data, _I8.as_pointer()),
                         [builder.mul(word_v, ir.Constant(i64, 4))])
        chunks = builder.udiv(n_v, ir.Constant(i64, CHUNK))
        dpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3), "llvm.x86.avx512.vpdpbusd.512")
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V16I32, None))
        with cgutils.for_range(builder, chunks) as loop:
            off = builder.mul(loop.index, ir.Constant(loop.index.type, CHUNK))
            va = builder.load(builder.bitcast(builder.gep(ap, [off]), _V16I32.as_pointer()), align=1)
            vb = builder.load(builder.bitcast(builder.gep(bp, [off]), _V16I32.as_pointer()), align=1)
            builder.store(builder.call(dpbusd, [builder.load(acc), va, vb]), acc)
        reduce_add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [_V16I32]), "llvm.vector.reduce.add.v16i32")
        return builder.sext(builder.call(reduce_add, [builder.load(acc)]), i64)

    return sig, codegen
