"""Instant first use: kernels compile per codec kind on first use, and can be compiled ahead."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from quiver.engine import warmup
from quiver.kernels import dispatch, scan
from quiver.kernels.chunks import run_chunks

from quiver.cli import main


def test_codec_distance_is_only_for_jitted_code():
    with pytest.raises(TypeError, match="jitted code"):
        dispatch.codec_distance(dispatch.F32_L2, np.zeros(2, np.float32), np.zeros((1, 2)),
                                np.zeros((1, 0)), 0)


def test_for_kind_gives_one_entry_per_kernel_and_kind():
    a = dispatch.for_kind(scan.scan_topk_chunk, dispatch.F32_L2)
    assert dispatch.for_kind(scan.scan_topk_chunk, dispatch.KINDS[1]) is a
    assert dispatch.for_kind(scan.scan_topk_chunk, dispatch.F32_IP) is not a
    assert dispatch.for_kind(scan.scan_topk_rows_chunk, dispatch.F32_L2) is not a


def test_run_chunks_runs_every_chunk_and_raises_their_errors():
    assert run_chunks(lambda c, n: (c, n), 3) == [(0, 3), (1, 3), (2, 3)]

    def boom(c, n):
        if c == 1:
            raise ValueError("chunk 1")
        return c

    with pytest.raises(ValueError, match="chunk 1"):
        run_chunks(boom, 2)


def test_chunk_count_follows_each_threads_numba_setting():
    """The thread count is read per call and per thread (``numba.set_num_threads`` is
    thread-local), through the threading layer's counter once it has started."""
    import threading

    import numba
    from quiver.kernels.chunks import chunk_count

    assert chunk_count(1) == 1
    seen = {}

    def worker(n):
        numba.set_num_threads(n)
        seen[n] = (chunk_count(8), chunk_count(1))

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, numba.config.NUMBA_NUM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    top = numba.config.NUMBA_NUM_THREADS
    assert seen[1] == (1, 1) and seen[top] == (min(top, 8), 1)


def test_a_fresh_process_compiles_only_the_kind_it_uses(tmp_path):
    """An empty cache, one l2 Flat search: the scan kernel is compiled for F32_L2 alone
    (the integer dispatch compiled all 26 codec arms into every kernel)."""
    code = textwrap.dedent("""
        import numpy as np, quiver
        from quiver.kernels import scan
        x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
        index = quiver.FlatIndex(8, "l2")
        index.add(x)
        assert index.search(x[:1], 3)[1][0, 0] == 0
        print(sorted({str(sig[0]) for sig in scan.scan_topk_chunk.signatures}))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['CodecKind(1)']"


def test_warm_index_covers_memory_mapped_copies():
    assert warmup.warm_index("Flat", "l2", dim=4, n=64) > 0
    assert set(warmup.warm_up(["Flat"], ["l2", "ip"])) == {"Flat l2", "Flat ip"}


def test_warmup_command(tmp_path, capsys):
    import quiver

    db = quiver.connect(tmp_path / "data")
    col = db.create_collection("docs", dim=4, metric="l2", index="Flat")
    col.upsert(points=[{"id": i, "vector": [float(i), 1.0, 0.0, 0.0]} for i in range(5)])
    db.close()
    assert main(["warmup", "--index", "Flat", "--metrics", "l2", "--data",
                 str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "Flat l2" in out and "collections of" in out and "warm in" in out
    assert main(["warmup", "--index", "HNSW16,NOPE", "--metrics", "l2"]) == 2
    assert "NOPE" in capsys.readouterr().err


def test_the_first_build_compiles_the_search_in_another_process(tmp_path):
    """An empty cache: the first HNSW add starts a child that compiles the traversal into
    the cache while the build compiles its own kernels, and the first search loads it from
    there instead of compiling it again (the second core's work, off the first result's
    critical path)."""
    code = textwrap.dedent("""
        import numpy as np, quiver, quiver.engine.planner
        from quiver.engine import precompile
        from quiver.kernels import dispatch, hnsw
        x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
        index = quiver.index("HNSW16", dim=8, metric="cosine")
        index.add(x)
        assert list(precompile._started) == [("ip", "f32")]
        q = x[:1] / np.linalg.norm(x[:1])
        traversal = quiver.engine.planner.Plan("traversal", 300, 300)  # 300 rows plan a scan
        assert index.search_positions(q, 3, None, quiver.SearchParams(), traversal)[1][0, 0] == 0
        entry = dispatch.for_kind(hnsw.search_chunk, dispatch.F32_IP)
        print(sum(entry.stats.cache_hits.values()), sum(entry.stats.cache_misses.values()))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), QUIVER_PRECOMPILE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1 0"


def test_precompile_stays_off_when_asked_or_cached(monkeypatch):
    from quiver.engine import precompile

    monkeypatch.setattr(precompile, "_started", {})
    monkeypatch.setenv("QUIVER_PRECOMPILE", "0")
    precompile.hnsw_search_ahead("l2", "f32", dispatch.F32_L2)
    assert precompile._started == {}
    monkeypatch.setenv("QUIVER_PRECOMPILE", "1")
    precompile.hnsw_search_ahead("l2", "lvq4x8", dispatch.F32_L2)  # not a plain codec
    assert precompile._started == {}
    monkeypatch.setattr(precompile, "_cached", lambda entry: True)
    precompile.hnsw_search_ahead("l2", "f32", dispatch.F32_L2)
    assert precompile._started == {}
