"""IVF-PQ with 4-bit codes scanned by the fast scan: ``IVF<nlist>,PQ<m>x4fs[,Refine(F16)]``.

Half a byte per sub-vector, and tables small enough (16 entries) to sit in registers: the
lists are kept in blocks of 32 rows (``kernels/fastscan.py``), the only copy of the codes a
search reads. The per-slot row codes that ``IVFIndex`` merges, saves and reconstructs from
are unpacked from the blocks when needed and not kept in RAM.
"""

from __future__ import annotations

import os

import numpy as np

from ...kernels import fastscan as kf
from ...kernels.chunks import chunk_count, run_chunks
from ..errors import CorruptData
from ..params import SearchParams
from ..vectors import readonly
from .ivfpq import IVFPQIndex

_FS_BYTES_PER_CODE = 0.25
"""Cost model: a fast-scanned code byte (two sub-vectors) costs about a quarter of a byte of
a float32 scan (32 rows per shuffle)."""


def pack_blocks(codes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 32 rows per list, pair-major: ``blocks[b, p, r]`` is byte p of the code of
    row r of block b. Returns the blocks flattened and each list's first block (lists + 1)."""
    sizes = np.diff(offsets)
    per_list = (sizes + kf.BLOCK - 1) // kf.BLOCK
    block_off = np.zeros(offsets.shape[0], np.int64)
    np.cumsum(per_list, out=block_off[1:])
    width = codes.shape[1]
    blocks = np.zeros((int(block_off[-1]), width, kf.BLOCK), np.uint8)
    slot = np.arange(codes.shape[0], dtype=np.int64)
    lists = np.repeat(np.arange(sizes.shape[0]), sizes)
    row = slot - offsets[lists]
    blocks[block_off[lists] + row // kf.BLOCK, :, row % kf.BLOCK] = codes
    return blocks.reshape(-1), block_off


def unpack_blocks(blocks: np.ndarray, block_off: np.ndarray, offsets: np.ndarray,
                  width: int) -> np.ndarray:
    """The per-slot row codes (n, width) that ``pack_blocks`` was given."""
    sizes = np.diff(offsets)
    lists = np.repeat(np.arange(sizes.shape[0]), sizes)
    row = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[lists]
    grid = blocks.reshape(-1, width, kf.BLOCK)
    return np.ascontiguousarray(grid[block_off[lists] + row // kf.BLOCK, :, row % kf.BLOCK])


class IVFPQFastScanIndex(IVFPQIndex):
    """``IVFPQIndex`` over ``PQ<m>x4fs`` codes (m even): residual codes of 4 bits, scanned 32
    rows at a time against uint8-quantised tables, re-ranked on the ``refine`` copy when
    there is one (the fast scan's estimates are coarse: refine is what it is for)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._blocks = np.zeros(0, np.uint8)
        self._block_off = np.zeros(1, np.int64)

    _NBITS = 4

    def train(self, x, queries=None) -> None:
        super().train(x, queries)
        self._set_blocks(*pack_blocks(np.zeros((0, self.codec.code_width), np.uint8),
                                      self._offsets))

    # --- the block layout -----------------------------------------------------------

    def _row_codes(self) -> np.ndarray:
        if self._codes.shape[0] == self._n:
            return self._codes[: self._n]
        return unpack_blocks(self._blocks, self._block_off, self._offsets, self.codec.code_width)

    def _set_blocks(self, blocks: np.ndarray, block_off: np.ndarray) -> None:
        self._blocks, self._block_off = blocks, block_off
        self._codes = np.zeros((0, self.codec.code_width), np.uint8)  # the blocks hold them

    def _merge(self, labels, codes, aux, scale) -> None:
        self._codes = self._row_codes()
        super()._merge(labels, codes, aux, scale)
        self._set_blocks(*pack_blocks(self._codes[: self._n], self._offsets))

    def _saved_codes(self) -> np.ndarray:
        """Nothing per slot: the blocks (``fs_blocks``) are the saved codes."""
        return np.zeros((self._n, 0), np.uint8)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._extra_arrays(), "fs_blocks": self._blocks,
                "fs_block_off": self._block_off}

    def _load_extra(self, directory, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        super()._load_extra(directory, meta, arrays)
        blocks, block_off = arrays.get("fs_blocks"), arrays.get("fs_block_off")
        sizes = np.diff(self._offsets)
        want = (sizes + kf.BLOCK - 1) // kf.BLOCK
        if (blocks is None or block_off is None or block_off.shape != self._offsets.shape
                or np.any(np.diff(block_off) != want)
                or blocks.shape != (int(block_off[-1]) * self.codec.code_width * kf.BLOCK,)):
            raise CorruptData(f"{os.path.join(directory, 'fs_blocks.npy')}: missing or not the "
                              f"blocks of the {self._n} rows' lists")
        self._set_blocks(blocks, block_off)

    # --- search ---------------------------------------------------------------------

    def _fs_lists(self) -> tuple:
        """(bases, blocks, block_off, offsets, slot_pos) as kernels read them: read-only
        views, one compiled variant whether built here or memory-mapped."""
        return tuple(map(readonly, (self._bases, self._blocks, self._block_off, self._offsets,
                                    self._slot_pos)))

    def _scan_one(self, q, nprobe, words, use_ok, out_d, out_i, ordered=True) -> None:
        bases, blocks, block_off, offsets, slot_pos = self._fs_lists()
        kf.search_one(q[0], self.codec.books_t(), self._scale(), readonly(self._centroids),
                      bases, self._cnorms, nprobe, self._tabs, self._kmetric == "l2", blocks,
                      block_off, offsets, slot_pos, words, use_ok, ordered, out_d[0], out_i[0])

    def _scan_batch(self, q, probes, words, use_ok, out_d, out_i, ordered=True) -> None:
        bases, blocks, block_off, offsets, slot_pos = self._fs_lists()
        args = (q, self.codec.books_t(), self._scale(), probes, bases, self._cnorms,
                self._tabs, self._kmetric == "l2", blocks, block_off, offsets, slot_pos, words,
                use_ok, ordered, out_d, out_i)
        run_chunks(lambda c, n: kf.search_chunk(*args, c, n), chunk_count(q.shape[0]))

    def _exact(self, q, k, words, use_ok, n_ok, params: SearchParams):
        """With a refine copy, an exact scan of it; else a fast scan of every list (cheaper
        than scoring a selective filter's rows one by one)."""
        if self._reranks(params):
            return super()._exact(q, k, words, use_ok, n_ok, params)
        return self._probe(q, k, max(self.lists, 1), words, use_ok, params)

    def _row_cost_bytes(self) -> float:
        return _FS_BYTES_PER_CODE * self.codec.code_width

    def memory_usage(self) -> dict[str, int]:
        usage = super().memory_usage()
        usage["vectors"] = int(self._blocks.nbytes) + int(self._codes.nbytes)
        return usage

    def __repr__(self) -> str:
        return (f"IVFPQFastScanIndex(dim={self.dim}, metric={self.metric.value!r}, "
                f"nlist={self.nlist}, codec={self.codec.name!r}, refine={self.refine!r}, "
                f"n={len(self)})")
