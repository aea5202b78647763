"""Multi-vector (MaxSim) retrieval on the shared token set: exhaustive exact Chamfer against
MUVERA FDE candidates plus exact re-ranking.

Recall@k is against the file's exact Chamfer top-k. QPS is one query per call on one thread
(Numba and BLAS pinned), best of ``--rounds`` passes; exhaustive and each candidate count
alternate within a round. Exhaustive QPS is timed on the first tenth of the queries (at least
20): it is the slow baseline. Build = FDE encoding plus the dense index over the FDEs.

    quiver bench-multivector                               # HNSW16 over default FDEs
    quiver bench-multivector --index Flat --k-sim 3 --d-proj 128 --r-reps 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..engine.muvera import TOKEN_HITS, FDEConfig, MultiVectorIndex
from .datasets import find_data_file, load_multivector

TOKEN_FILE = "wordnet-minilm-tokens-128.hdf5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=f"token HDF5 (default {TOKEN_FILE} in ../shared/data)")
    p.add_argument("--index", default="HNSW16", help="dense index spec over the FDEs")
    p.add_argument("--k-sim", type=int, default=FDEConfig.k_sim)
    p.add_argument("--d-proj", type=int, default=FDEConfig.d_proj)
    p.add_argument("--r-reps", type=int, default=FDEConfig.r_reps)
    p.add_argument("--candidates", default="0.01,0.02,0.05",
                   help="share of documents (< 1) or counts (>= 1) re-ranked, comma list")
    p.add_argument("--retrieval", default="fde", choices=("fde", "tokens"),
                   help="candidates from FDEs (MUVERA) or from each query token's nearest "
                        "document tokens")
    p.add_argument("--token-hits", type=int, default=TOKEN_HITS,
                   help=f"tokens fetched per query token (--retrieval tokens; default {TOKEN_HITS})")
    p.add_argument("--ef", type=int, help="beam width of the candidate search (HNSW)")
    p.add_argument("--tokens", default="f16", choices=("f16", "f32", "lvq8"),
                   help="how document tokens are stored")
    p.add_argument("--pool-factor", type=int, default=1,
                   help="pool each document's tokens to 1/N of them (token pooling)")
    p.add_argument("--nprobe", type=int, help="lists probed by an IVF candidate index")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, help="use the first N queries")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compare-fastembed", action="store_true",
                   help="also encode with fastembed's MUVERA (same k_sim, d_proj, R; pip "
                        "install fastembed) and compare both encoders' brute-force FDE "
                        "candidates, re-ranked exactly, at each count")
    p.add_argument("--out", help="write the figures as JSON here")


def _qps(fn, queries) -> float:
    t = time.perf_counter()
    for q in queries:
        fn(q)
    return len(queries) / (time.perf_counter() - t)


def _encoder_recall(doc_fde: np.ndarray, query_fde: np.ndarray, ds, counts: list[int], k: int,
                    truth: np.ndarray) -> dict[int, float]:
    """Recall@k of brute-force FDE candidates (the best ``c`` by FDE inner product) re-ranked
    by exact Chamfer: what an encoder alone achieves, with no index in the way."""
    from ..kernels import chamfer as kc

    sims = query_fde @ doc_fde.T
    out = {}
    for c in counts:
        cand = np.ascontiguousarray(np.argpartition(-sims, c - 1, axis=1)[:, :c], np.int64)
        d = np.empty((ds.nq, k), np.float32)
        i = np.empty((ds.nq, k), np.int64)
        kc.chamfer_topk_chunk(ds.query_vectors, ds.query_offsets, ds.doc_vectors,
                              np.zeros((ds.doc_vectors.shape[0], 0), np.float32),
                              np.zeros(0, np.float32), ds.doc_offsets, cand, k, d, i, 0, 1)
        out[c] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i, truth,
                                                                          strict=True)]))
    return out


def _compare_fastembed(ds, cfg: FDEConfig, counts: list[int], k: int,
                       truth: np.ndarray) -> dict:
    """Quiver's FDE encoder and fastembed's ``Muvera`` with the same parameters, on the same
    documents and queries, each judged by ``_encoder_recall``."""
    try:
        from fastembed.postprocess.muvera import Muvera
    except ImportError:
        raise SystemExit("--compare-fastembed needs fastembed (pip install fastembed)") from None
    from ..engine.muvera import FDEEncoder

    fe = Muvera(ds.dim, k_sim=cfg.k_sim, dim_proj=cfg.d_proj, r_reps=cfg.r_reps)
    t = time.perf_counter()
    fe_docs = np.stack([fe.process_document(ds.doc_vectors[ds.doc_offsets[j]:ds.doc_offsets[j + 1]])
                        for j in range(ds.n_docs)]).astype(np.float32)
    fe_s = time.perf_counter() - t
    fe_queries = np.stack([fe.process_query(ds.query(j)) for j in range(ds.nq)]).astype(np.float32)
    ours = FDEEncoder(ds.dim, cfg)
    t = time.perf_counter()
    q_docs = ours.documents(ds.doc_vectors, ds.doc_offsets)
    q_s = time.perf_counter() - t
    q_queries = ours.queries(ds.query_vectors, ds.query_offsets)
    return {"fde_dim": cfg.dim, "encode_docs_s": {"quiver": q_s, "fastembed": fe_s},
            "recall": {"quiver": _encoder_recall(q_docs, q_queries, ds, counts, k, truth),
                       "fastembed": _encoder_recall(fe_docs, fe_queries, ds, counts, k, truth)}}


def run(args: argparse.Namespace) -> dict:
    import numba
    from threadpoolctl import threadpool_limits

    path = args.dataset or find_data_file(TOKEN_FILE)
    if path is None:
        raise SystemExit(f"no {TOKEN_FILE}: pass --dataset")
    ds = load_multivector(path, queries=args.queries)
    docs = (ds.doc_vectors, ds.doc_offsets)
    queries = [ds.query(i) for i in range(ds.nq)]
    truth = ds.neighbors[:, : args.k]
    cfg = FDEConfig(k_sim=args.k_sim, d_proj=args.d_proj, r_reps=args.r_reps)
    t = time.perf_counter()
    idx = MultiVectorIndex(ds.dim, index=args.index, fde=cfg, retrieval=args.retrieval,
                           token_hits=args.token_hits, pool_factor=args.pool_factor,
                           tokens=args.tokens)
    idx.add(docs)
    build_s = time.perf_counter() - t
    counts = []
    for c in args.candidates.split(","):
        v = float(c)
        counts.append(max(args.k, round(v * ds.n_docs)) if v < 1 else int(v))

    def recall(ids) -> float:
        return float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, truth,
                                                                           strict=True)]))

    rows = {"exhaustive": {"recall": recall(idx.search(queries, args.k, exact=True)[1])}}
    for c in counts:
        rows[f"candidates {c}"] = {"recall": recall(idx.search(queries, args.k, candidates=c,
                                                               ef=args.ef,
                                                               nprobe=args.nprobe)[1]),
                                   "share": c / ds.n_docs}
    with threadpool_limits(1):
        numba.set_num_threads(1)
        idx.search(queries[:2], args.k, exact=True)  # warm
        best = dict.fromkeys(rows, 0.0)
        for _ in range(args.rounds):
            best["exhaustive"] = max(best["exhaustive"], _qps(
                lambda q: idx.search(q, args.k, exact=True), queries[: max(20, len(queries) // 10)]))
            for c in counts:
                key = f"candidates {c}"
                best[key] = max(best[key], _qps(
                    lambda q, c=c: idx.search(q, args.k, candidates=c, ef=args.ef,
                                              nprobe=args.nprobe), queries))
    for key, qps in best.items():
        rows[key]["qps_1thread"] = qps
    report = {"dataset": ds.name, "n_docs": ds.n_docs, "nq": ds.nq, "index": args.index,
              "retrieval": args.retrieval, "token_hits": args.token_hits, "ef": args.ef,
              "nprobe": args.nprobe, "pool_factor": args.pool_factor,
              "token_bytes": idx.memory_usage()["tokens"],
              "memory_bytes": sum(idx.memory_usage().values()),
              "fde": {"k_sim": cfg.k_sim, "d_proj": cfg.d_proj, "r_reps": cfg.r_reps,
                      "dim": cfg.dim}, "build_s": build_s, "rows": rows}
    what = (f"FDE {cfg.dim}-d (k_sim {cfg.k_sim}, d_proj {cfg.d_proj}, R {cfg.r_reps})"
            if args.retrieval == "fde" else f"tokens ({args.token_hits} hits a query token)")
    print(f"{ds.name}: {ds.n_docs} docs, {ds.nq} queries; {what} in {args.index}, built in "
          f"{build_s:.1f} s, {report['memory_bytes'] / 1e6:.1f} MB resident")
    ex = rows["exhaustive"]["qps_1thread"]
    for key, row in rows.items():
        print(f"  {key:16s} recall@{args.k} {row['recall']:.4f}  QPS 1 thread "
              f"{row['qps_1thread']:8.1f}  ({row['qps_1thread'] / ex:5.1f}x exhaustive)")
    if args.compare_fastembed:
        report["encoders"] = cmp = _compare_fastembed(ds, cfg, counts, args.k, truth)
        print(f"  encoders, brute-force {cmp['fde_dim']}-d FDE candidates + exact re-rank "
              f"(documents encoded in {cmp['encode_docs_s']['quiver']:.2f} s by Quiver, "
              f"{cmp['encode_docs_s']['fastembed']:.2f} s by fastembed):")
        for c in counts:
            print(f"    {c:6d} candidates: recall@{args.k} Quiver "
                  f"{cmp['recall']['quiver'][c]:.4f}, fastembed {cmp['recall']['fastembed'][c]:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


def run_cli(args: argparse.Namespace) -> int:
    run(args)
    return 0
