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
def u8s8_dot(typingctx, codes, qi):
    """sum_j codes[j] * qi[j] (uint8 x int8, exact in int64) over the first
    ``len(codes) // CHUNK * CHUNK`` entries of two contiguous 1-D arrays."""
    if not (isinstance(codes, types.Array) and isinstance(qi, types.Array)
            and codes.dtype == types.uint8 and qi.dtype == types.int8):
        return None
    sig = types.int64(codes, qi)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        b = context.make_array(signature.args[1])(context, builder, args[1])
        n = cgutils.unpack_tuple(builder, a.shape, 1)[0]
        chunks = builder.udiv(n, ir.Constant(n.type, CHUNK))
        ap = builder.bitcast(a.data, _I8.as_pointer())
        bp = builder.bitcast(b.data, _I8.as_pointer())
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
        return builder.sext(builder.call(reduce_add, [builder.load(acc)]), ir.IntType(64))

    return sig, codegen
