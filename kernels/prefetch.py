"""Software prefetch: ask the CPU to start loading a stored row before the kernel reads it.

Graph traversal reads rows in an order no hardware prefetcher can guess; issuing the loads
for a node's neighbours before computing their distances overlaps those cache misses
(hnswlib and FAISS do the same with ``_mm_prefetch``). Numba has no prefetch, so this emits
LLVM's ``llvm.prefetch`` intrinsic; it is a hint and never faults.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import INLINE

_LINE = 64
_INTRINSIC = "llvm.prefetch.p0i8"
"""The typed-pointer name of the overload: what LLVM 14 wants, and what later versions (with
opaque pointers, where the name is ``.p0``) remangle on their own (checked with LLVM 22)."""


def _prefetch_intrinsic(locality: int):
    """An intrinsic prefetching (for reading) the line holding byte ``offset`` of row ``row``
    of a 2-D array (row start found through its strides, any layout), with LLVM's
    ``locality`` (3: into every cache level, x86 ``prefetcht0``; 2: into L2 and L3,
    ``prefetcht1``)."""

    @intrinsic
    def prefetch_byte(typingctx, arr, row, offset):
        if not (isinstance(arr, types.Array) and arr.ndim == 2):
            return None
        sig = types.void(arr, row, offset)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            row_v = context.cast(builder, args[1], signature.args[1], types.intp)
            off_v = context.cast(builder, args[2], signature.args[2], types.intp)
            zero = context.get_constant(types.intp, 0)
            base = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(
                builder, ary.shape, 2), cgutils.unpack_tuple(builder, ary.strides, 2),
                aryty.layout, [row_v, zero])
            i8p = ir.IntType(8).as_pointer()
            addr = builder.gep(builder.bitcast(base, i8p), [off_v])
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, _INTRINSIC)
            builder.call(fn, [addr, i32(0), i32(locality), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch_byte


_prefetch_byte = _prefetch_intrinsic(3)
_prefetch_byte_l2 = _prefetch_intrinsic(2)


@njit(**INLINE)
def prefetch_row(arr: np.ndarray, row: int, nbytes: int) -> None:
    """Prefetch the first ``nbytes`` bytes of ``arr[row]`` (clipped to the row)."""
    stop = min(nbytes, arr.shape[1] * arr.itemsize)
    for off in range(0, stop, _LINE):
        _prefetch_byte(arr, row, off)


@njit(**INLINE)
def prefetch_row_l2(arr: np.ndarray, row: int, nbytes: int) -> None:
    """``prefetch_row`` into L2 (``prefetcht1``), for many rows at once: a traversal that
    asks for every line of a node's ~20 unvisited neighbours' rows fills the L1's few miss
    buffers with T0 prefetches and then waits on them, while the L2 keeps more misses in
    flight. Random 384-byte LVQ-8 rows of WordNet (45 MB), prefetched 21 at a time: 67 ns a
    distance, against 109 with T0 over their first 256 bytes (the traversal's old prefetch)
    and 113 with T0 over all of them."""
    stop = min(nbytes, arr.shape[1] * arr.itemsize)
    for off in range(0, stop, _LINE):
        _prefetch_byte_l2(arr, row, off)


@njit(**INLINE)
def prefetch_span_l2(arr: np.ndarray, row: int, start: int, stop: int) -> None:
    """``prefetch_row_l2`` of bytes [start, stop) of ``arr[row]`` (start line-aligned)."""
    for off in range(start & ~(_LINE - 1), stop, _LINE):
        _prefetch_byte_l2(arr, row, off)


SIDE_BYTES = 64
"""How much of a row's side values a stored-row prefetch asks for: one line (LVQ's bias, step
and norm are 12-24 bytes; float32 rows have none)."""


@njit(**INLINE)
def prefetch_stored_row(codes: np.ndarray, aux: np.ndarray, row: int, nbytes: int,
                        side: int) -> None:
    """``prefetch_row_l2`` of a stored row's codes (up to ``nbytes``) and of its side values
    (up to ``side`` bytes, ``SIDE_BYTES`` where a distance reads them): those live in their
    own array (``aux``) and nearly every distance reads them. Left to the
    distance, that line's miss held HNSW16,LVQ8 at 0.66x (``python -m quiver.bench.ab --base
    HEAD --spec HNSW16,LVQ8 --rounds 5 --efs 16,32,48,64``: 1.517x with it in the beam, 1.361x
    committed everywhere)."""
    prefetch_row_l2(codes, row, nbytes)
    prefetch_row_l2(aux, row, side)
