"""Save / load (memory-mapped) round trips, writes after load, and damage detection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import BLAS_MIN, DTYPES, METRICS, Oracle, make_data
from quiver.engine import persist
from quiver.engine.aligned import ALIGN, aligned_empty, aligned_full, load_npy_aligned

from quiver import CorruptData, FlatIndex

NPY_FILES = ("codes.npy", "aux.npy", "ids.npy")


def build(metric="l2", dtype="f32", n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = make_data(rng, n, d)
    ids = rng.choice(10 * n, size=n, replace=False)
    idx = FlatIndex(d, metric, dtype)
    idx.add(x, ids)
    oracle = Oracle(d, metric, dtype)
    oracle.add(x, ids)
    gone = ids[::7]
    idx.remove(gone)
    oracle.remove(gone)
    return idx, oracle, rng


def query_cases(rng, idx):
    live = np.array(sorted(idx._idmap._pos), np.int64)
    d = idx.dim
    for q in (make_data(rng, 1, d)[0], make_data(rng, 3, d), make_data(rng, BLAS_MIN + 2, d)):
        for allowed in (None, live[:10], live[: len(live) // 2]):
            yield q, allowed


def assert_same_results(a, b, rng, k=10):
    for q, allowed in query_cases(rng, a):
        sa, ia = a.search(q, k, allowed=allowed)
        sb, ib = b.search(q, k, allowed=allowed)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(sa, sb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_round_trip_gives_identical_results(tmp_path, metric, dtype):
    idx, oracle, rng = build(metric, dtype)
    idx.save(tmp_path / "ix")
    assert not list((tmp_path / "ix").glob("*.tmp"))
    loaded = FlatIndex.load(tmp_path / "ix")
    assert (loaded.dim, loaded.metric, loaded.dtype, len(loaded)) == (
        idx.dim, idx.metric, idx.dtype, len(idx))
    assert isinstance(loaded._store.codes, np.memmap)  # memory-mapped, read-only
    assert not loaded._store.codes.flags.writeable
    assert_same_results(idx, loaded, np.random.default_rng(1))
    in_memory = FlatIndex.load(tmp_path / "ix", mmap=False)
    assert_same_results(idx, in_memory, np.random.default_rng(2))
    for q, allowed in query_cases(np.random.default_rng(3), loaded):
        s, i = loaded.search(q, 10, allowed=allowed)
        oracle.check(s, i, q, 10, allowed=allowed, exact_ids=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_writes_after_load_leave_files_untouched(tmp_path, metric, dtype):
    idx, oracle, rng = build(metric, dtype, n=150, d=6, seed=4)
    idx.save(tmp_path)
    crcs = {f: persist.file_crc32(tmp_path / f) for f in NPY_FILES}
    loaded = FlatIndex.load(tmp_path)
    # add to the read-only mapped index, then remove (which moves rows), then add again
    x_new = make_data(rng, 30, 6)
    new_ids = np.arange(10**5, 10**5 + 30)
    loaded.add(x_new, new_ids)
    oracle.add(x_new, new_ids)
    live = np.array(sorted(oracle.vectors))
    gone = rng.choice(live, size=25, replace=False)
    assert loaded.remove(gone) == 25
    oracle.remove(gone)
    loaded.add(x_new[:3] + 1, gone[:3])
    oracle.add(x_new[:3] + 1, gone[:3])
    assert len(loaded) == len(oracle.vectors)
    assert loaded.add(np.ones((1, 6))).tolist() == [10**5 + 30]  # next after the largest id
    oracle.add(np.ones((1, 6)), [10**5 + 30])
    for q, allowed in query_cases(rng, loaded):
        s, i = loaded.search(q, 10, allowed=allowed)
        oracle.check(s, i, q, 10, allowed=allowed, exact_ids=True)
    # the saved files were never written in place
    assert crcs == {f: persist.file_crc32(tmp_path / f) for f in NPY_FILES}
    assert_same_results(idx, FlatIndex.load(tmp_path), rng)
    # saving the modified index over its own (still mapped) directory, and loading that
    loaded.save(tmp_path)
    assert_same_results(loaded, FlatIndex.load(tmp_path), rng)


def test_remove_first_on_loaded_index(tmp_path):
    idx, oracle, rng = build("ip", "f16", n=80, d=5)
    idx.save(tmp_path)
    loaded = FlatIndex.load(tmp_path)
    live = np.array(sorted(oracle.vectors))
    assert loaded.remove(live[:10]) == 10
    oracle.remove(live[:10])
    for q, allowed in query_cases(rng, loaded):
        s, i = loaded.search(q, 10, allowed=allowed)
        oracle.check(s, i, q, 10, allowed=allowed, exact_ids=True)


def test_empty_index_round_trip(tmp_path):
    FlatIndex(3, "cosine", "f16").save(tmp_path)
    loaded = FlatIndex.load(tmp_path)
    assert len(loaded) == 0 and loaded.dtype == "f16" and loaded.metric.value == "cosine"
    s, i = loaded.search(np.ones(3), 2)
    assert (i == -1).all() and (s == -np.inf).all()
    loaded.add(np.ones((2, 3)), [4, 9])
    _, i = loaded.search(np.ones(3), 2)
    assert sorted(i.tolist()) == [4, 9]


# --- damage -----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    idx, _, _ = build("l2", "f32", n=60, d=4)
    idx.save(tmp_path)
    return tmp_path


def load_fails(directory, name: str):
    with pytest.raises(CorruptData) as info:
        FlatIndex.load(directory)
    assert str(directory / name) in str(info.value), str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", NPY_FILES)
def test_truncated_npy(saved, name):
    path = saved / name
    data = path.read_bytes()
    for cut in (1, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        assert "truncated" in load_fails(saved, name)


@pytest.mark.parametrize("name", NPY_FILES)
def test_flipped_byte_in_npy(saved, name):
    path = saved / name
    data = path.read_bytes()
    # the magic string, the header text, the first and the last data byte
    for offset in sorted({0, 12, min(130, len(data) - 1), len(data) - 1}):
        bad = bytearray(data)
        bad[offset] ^= 0x10
        path.write_bytes(bytes(bad))
        assert "checksum" in load_fails(saved, name)
    path.write_bytes(data)
    FlatIndex.load(saved)


@pytest.mark.parametrize("name", NPY_FILES)
def test_missing_npy(saved, name):
    os.remove(saved / name)
    assert "missing" in load_fails(saved, name)


def test_missing_manifest(saved, tmp_path):
    os.remove(saved / "manifest.json")
    load_fails(saved, "manifest.json")
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    load_fails(empty, "manifest.json")


@pytest.mark.parametrize("content", [b"", b"{", b"\x00\xff garbage", b"[1, 2]", b"{}",
                                     b'{"files": 3}', b"null"])
def test_garbage_manifest(saved, content):
    (saved / "manifest.json").write_bytes(content)
    load_fails(saved, "manifest.json")


def test_every_flipped_byte_in_manifest_is_detected(saved):
    path = saved / "manifest.json"
    data = path.read_bytes()
    for offset in range(len(data)):
        for bit in (0x01, 0x20):
            bad = bytearray(data)
            bad[offset] ^= bit
            path.write_bytes(bytes(bad))
            try:
                FlatIndex.load(saved)
            except CorruptData as exc:
                assert str(path) in str(exc), (offset, bit, str(exc))
            else:
                pytest.fail(f"flipping bit {bit:#x} of manifest byte {offset} went unnoticed")
    path.write_bytes(data)
    FlatIndex.load(saved)


def test_truncated_manifest(saved):
    path = saved / "manifest.json"
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        load_fails(saved, "manifest.json")


def rewrite_manifest(path, edit):
    manifest = json.loads(path.read_bytes())
    manifest.pop("manifest_crc32", None)
    edit(manifest)
    manifest["manifest_crc32"] = persist._manifest_crc(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "words"), [
    (lambda m: m.update(format_version=2), "format version"),
    (lambda m: m.update(kind="hnsw"), "expected a 'flat'"),
    (lambda m: m["files"]["codes"].pop("crc32"), "incomplete"),
    (lambda m: m["files"]["ids"].update(shape=[3]), "do not match the manifest"),
    (lambda m: m["files"]["aux"].update(dtype="<f8"), "do not match the manifest"),
    (lambda m: m["files"]["codes"].update(bytes=1), "truncated"),
])
def test_consistent_but_wrong_manifest(saved, edit, words):
    rewrite_manifest(saved / "manifest.json", edit)
    with pytest.raises(CorruptData, match=words) as info:
        FlatIndex.load(saved)
    assert str(saved) in str(info.value)


def test_manifest_checksum_mismatch_is_named(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest["meta"]["dim"] = 5  # valid JSON, consistent-looking, wrong
    path.write_text(json.dumps(manifest))
    assert "checksum" in load_fails(saved, "manifest.json")


# --- aligned storage -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [0, 1, 7, (3, 384), (5, 0), (129, 2, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int32, np.int64, np.float16])
def test_aligned_arrays_start_on_a_cache_line(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.size == 0 or a.ctypes.data % ALIGN == 0  # (no data, nothing to align)
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
    b = aligned_full(shape, 3, dtype)
    assert (b.size == 0 or b.ctypes.data % ALIGN == 0) and (b == 3).all()


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_load_npy_aligned_matches_np_load(tmp_path, order, version):
    x = np.asarray(np.arange(6 * 385, dtype=np.float32).reshape(6, 385), order=order)
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, x, version=version)
    y = load_npy_aligned(path)
    np.testing.assert_array_equal(y, np.load(path))
    assert y.ctypes.data % ALIGN == 0
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="bytes expected"):
        load_npy_aligned(path)


def test_index_loaded_into_memory_is_aligned(tmp_path):
    x = make_data(np.random.default_rng(3), 300, 24)
    idx = FlatIndex(24, "l2")
    idx.add(x)
    idx.save(tmp_path / "i")
    loaded = FlatIndex.load(tmp_path / "i", mmap=False)
    codes = loaded._store.codes  # (its view() is read-only either way)
    assert codes.ctypes.data % ALIGN == 0 and codes.flags.writeable
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[1], idx.search(x[:5], 3)[1])
