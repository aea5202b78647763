"""The ``quiver`` command. Each subcommand is a ``register_*`` function plus a handler, so
adding one (``serve``, admin tools) is one more entry in ``SUBCOMMANDS``."""

from __future__ import annotations

import os

# Must precede any faiss import or OpenMP start: spinning threads wreck timings on small boxes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence

from quiver.bench.args import int_list


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="recall/QPS/latency benchmark of index specs against peers",
        description="Benchmark Quiver index specs side by side with peers on one dataset; "
                    "writes results.json, results.md and recall_qps.png.")
    p.add_argument("--quickstart", action="store_true",
                   help="Flat vs faiss Flat on the WordNet file if present, else synthetic "
                        "20k x 128; 200 latency queries, 2 rounds of 2 reps")
    p.add_argument("--dataset", help="ann-benchmarks HDF5 path, or synthetic[:NxD][:metric] "
                                     "(default: WordNet file in ../shared/data or "
                                     "$QUIVER_DATA_DIR, else synthetic:20000x128)")
    p.add_argument("--index", action="append", dest="indexes", metavar="SPEC",
                   help="Quiver index spec, repeatable (default Flat); SPEC@learn trains the codec "
                        "with the dataset's learn queries (LeanVec-OOD), SPEC@links adds "
                        "their edges to the graph (HNSW link_queries)")
    p.add_argument("--peers", type=_name_list, default=None,
                   help="comma list: faiss, faiss-hnsw[:M], faiss-hnsw-sq8[:M], "
                        "faiss-ivf[:nlist], faiss-ivfpq[:nlist[:m]], faiss-ivfpq-refine, "
                        "faiss-ivfpqfs-refine, faiss-opq-ivfpq-refine, hnswlib[:M], usearch[:M], "
                        "svs[:R[:16|32]]; on Intel CPUs svs-lvq[:B1[:B2[:R]]], "
                        "svs-leanvec[:d[:R]], svs-leanvec-ood[:d[:R]] (each in its own process)")
    p.add_argument("--ef", type=int_list, help="ef values for HNSW sweeps (16,32,64,128,256)")
    p.add_argument("--nprobe", type=int_list, help="nprobe values for IVF sweeps (1,4,16,64)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--limit", type=int, help="keep the first N train vectors (exact ground "
                                             "truth recomputed)")
    p.add_argument("--queries", type=int, help="use the first N queries")
    p.add_argument("--latency-queries", type=int, default=200,
                   help="queries timed one at a time (default 200)")
    p.add_argument("--reps", type=int,
                   help="timed batch calls per engine, point and round, best kept (default 3; "
                        "2 with --quickstart)")
    p.add_argument("--rounds", type=int,
                   help="interleaved rounds: every engine timed back to back once per round, "
                        "engine order rotating, best round kept (default 3; 2 with --quickstart)")
    p.add_argument("--threads-only", choices=["1", "all"],
                   help="measure QPS with only this thread setting (default both)")
    p.add_argument("--out", help="output folder (default bench/results/<dataset>-<name>)")
    p.add_argument("--name", help="output folder suffix instead of a timestamp")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from quiver.bench.report import markdown, write_report
    from quiver.bench.runner import BenchConfig, default_dataset, default_out_dir, run_benchmark

    peers = args.peers
    if peers is None:
        peers = ["faiss"] if args.quickstart and importlib.util.find_spec("faiss") else []
    short = 2 if args.quickstart else 3  # rounds and reps: quickstart stays about as fast
    cfg = BenchConfig(dataset=args.dataset or default_dataset(),
                      indexes=args.indexes or ["Flat"], peers=peers, k=args.k,
                      limit=args.limit, queries=args.queries,
                      latency_queries=args.latency_queries,
                      reps=short if args.reps is None else args.reps,
                      rounds=short if args.rounds is None else args.rounds,
                      threads=args.threads_only or "both")
    if args.ef:
        cfg.efs = args.ef
    if args.nprobe:
        cfg.nprobes = args.nprobe
    try:
        report = run_benchmark(cfg)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"quiver bench: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_out_dir(report["dataset"]["name"],
                                      args.name or ("quickstart" if args.quickstart else None))
    paths = write_report(report, out)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0 if report["results"] else 1


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the REST server on an embedded database",
                       description="Serve the REST API (OpenAPI docs at /docs). API keys come "
                                   "from QUIVER_API_KEY / QUIVER_READ_ONLY_API_KEY, the --config "
                                   "JSON file or --api-key (which other users can read in the "
                                   "process list).")
    p.add_argument("--data", default="./quiver-data", help="database folder (default ./quiver-data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6333)
    p.add_argument("--api-key", help="read-write API key (header api-key); visible in the process "
                                     "list, so prefer QUIVER_API_KEY or --config")
    p.add_argument("--read-only-api-key", help="read-only API key; prefer "
                                               "QUIVER_READ_ONLY_API_KEY or --config")
    p.add_argument("--config", help="JSON config file (keys, limits, CORS origins)")
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-k", type=int)
    p.add_argument("--request-timeout", type=float)
    p.add_argument("--body-timeout", type=float,
                   help="seconds a request body may stall before a 408 (default 30)")
    p.add_argument("--on-corrupt", choices=["raise", "truncate"], default="raise",
                   help="a collection whose write-ahead log has a damaged record: refuse to open "
                        "it (default), or cut the log there, losing the records after it "
                        "(`quiver repair DATA` reports which first)")
    p.add_argument("--no-warmup", action="store_true", help="skip the JIT warm-up")
    p.add_argument("--cluster", help="front a Ray cluster: 'auto' (join this machine's, or start "
                                     "one), 'local', or a Ray address; collections created with "
                                     "shards/replicas (Quiver) or shard_number/replication_factor "
                                     "(Qdrant) are spread over its actors (needs quiver[ray])")
    p.add_argument("--log-level", default="info")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from quiver.server.app import create_app
    from quiver.server.settings import Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env(args.config, data=args.data, max_body_bytes=args.max_body_bytes,
                                 max_batch=args.max_batch, max_k=args.max_k,
                                 request_timeout=args.request_timeout,
                                 body_timeout=args.body_timeout)
    if args.api_key:
        settings.api_keys.add(args.api_key)
    if args.read_only_api_key:
        settings.read_only_keys.add(args.read_only_api_key)
    settings.warmup = not args.no_warmup
    settings.on_corrupt = args.on_corrupt
    settings.cluster = args.cluster
    from quiver.engine.database import connect
    from quiver.engine.errors import QuiverError

    try:  # here, not in the app's startup: a held directory is one line, not a traceback
        db = connect(settings.data, on_corrupt=settings.on_corrupt,
                     **({"cluster": args.cluster} if args.cluster else {}))
    except QuiverError as exc:
        print(f"quiver serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, db=db)
    print(f"Quiver serving {settings.data.resolve()} on http://{args.host}:{args.port} "
          f"(docs: http://{args.host}:{args.port}/docs)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under the
    # handler it found: with the defaults the process dies by the signal (exit -15) instead
    # of exiting 0 after a clean shutdown. No-op handlers make that second delivery harmless.
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                access_log=False, timeout_graceful_shutdown=30)
    return 0


def register_warmup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warmup", help="compile the search kernels into the Numba cache ahead of first use",
        description="Run every search path of the named index specs once on tiny data, in "
                    "memory and memory-mapped from files, so later processes (a server, a "
                    "notebook) load compiled kernels from the cache (NUMBA_CACHE_DIR) instead "
                    "of compiling on their first request. Default: Flat and HNSW16,F32 (what "
                    "a collection with the default index runs), metrics cosine, l2 and ip.")
    p.add_argument("--index", action="append", dest="indexes", metavar="SPEC",
                   help="an index spec to warm, repeatable (e.g. HNSW16,LVQ4x8, IVF64,Flat)")
    p.add_argument("--codecs", type=_name_list, default=[],
                   help="comma list of codecs, each warmed as HNSW16,<codec> (F32, F16, SQ8, "
                        "LVQ8, LVQ4x8, ...)")
    p.add_argument("--metrics", type=_name_list, default=None,
                   help="comma list (default cosine,l2,ip)")
    p.add_argument("--data", help="also open this data directory read-only and search every "
                                  "field of every collection once")
    p.set_defaults(handler=cmd_warmup)


def cmd_warmup(args: argparse.Namespace) -> int:
    import time

    from quiver.engine import warmup
    from quiver.engine.errors import QuiverError

    specs = list(args.indexes or []) + [f"HNSW16,{c}" for c in args.codecs]
    specs = specs or list(warmup.DEFAULT_SPECS)
    t = time.perf_counter()
    try:
        took = warmup.warm_up(specs, args.metrics or warmup.DEFAULT_METRICS)
        for what, secs in took.items():
            print(f"{what:40s} {secs:6.2f} s")
        if args.data:
            from quiver.engine.database import Database

            with Database(args.data, read_only=True, optimizer=False) as db:
                print(f"{'collections of ' + args.data:40s} {warmup.warm_database(db):6.2f} s")
    except QuiverError as exc:
        print(f"quiver warmup: {exc}", file=sys.stderr)
        return 2
    print(f"warm in {time.perf_counter() - t:.1f} s")
    return 0


def register_repair(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "repair", help="report (and with --apply, drop) what damage a data directory holds",
        description="Check every collection of a data directory: damaged write-ahead log "
                    "records, a missing or damaged manifest, segments failing their checksums. "
                    "Prints each problem, the repair and what it loses; changes nothing unless "
                    "--apply is given. No server may run on the directory meanwhile.")
    p.add_argument("data", help="the data directory (what `quiver serve --data` uses)")
    p.add_argument("--apply", action="store_true", help="carry out the repairs listed")
    p.set_defaults(handler=cmd_repair)


def cmd_repair(args: argparse.Namespace) -> int:
    from quiver.engine.errors import QuiverError
    from quiver.engine.repair import repair

    try:
        findings = repair(args.data, apply=args.apply)
    except QuiverError as exc:
        print(f"quiver repair: {exc}", file=sys.stderr)
        return 2
    if not findings:
        print(f"{args.data}: no damage found")
        return 0
    for f in findings:
        print(f)
    stuck = [f for f in findings if not f.fixable]
    if args.apply:
        print(f"repaired {len(findings) - len(stuck)} of {len(findings)} problem(s)")
    else:
        print(f"{len(findings)} problem(s); run again with --apply to carry out the fixable ones")
    return 1 if stuck or not args.apply else 0


def _register_bench_module(sub: argparse._SubParsersAction, command: str, module: str,
                           help_text: str) -> None:
    """``quiver bench-<kind>``: the arguments and the runner live in ``quiver.bench.<module>``."""
    mod = importlib.import_module(f"quiver.bench.{module}")
    p = sub.add_parser(command, help=help_text, description=mod.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(p)
    p.set_defaults(handler=mod.run_cli)


def register_bench_filtered(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-filtered", "filtered",
                           "filtered HNSW: quiver (ids / Bitset) vs faiss IDSelectorBitmap by "
                           "selectivity, ef sweep")


def register_bench_collection(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-collection", "collection",
                           "embedded collection: ingest, time to indexed, restart, hybrid "
                           "filtered queries")


def register_bench_server(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-server", "server",
                           "REST server vs in-process: throughput, latency, per-request CPU "
                           "overhead, JSON vs binary bodies")


def register_bench_qdrant_client(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-qdrant-client", "qdrant_client",
                           "qdrant-client vs quiver.Client against one quiver serve: upsert "
                           "points/s, query QPS and p50/p99 latency, single and batch")


def register_bench_first_use(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-first-use", "first_use",
                           "fresh install: seconds to the first search result and to a ready "
                           "server, empty and warm JIT cache, per-kernel compile time")


def register_bench_multivector(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-multivector", "multivector",
                           "MaxSim retrieval on the shared token set: exhaustive Chamfer vs "
                           "MUVERA candidates + exact re-ranking")


def register_bench_cluster(sub: argparse._SubParsersAction) -> None:
    _register_bench_module(sub, "bench-cluster", "cluster",
                           "sharded collections on Ray vs embedded: actor-hop cost, batch "
                           "scaling over 1/2/4 shards, ingest, resident bytes per shard")


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_bench, register_bench_filtered, register_bench_collection, register_bench_server,
    register_bench_qdrant_client, register_bench_first_use, register_bench_multivector,
    register_bench_cluster, register_serve,
    register_warmup, register_repair]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quiver", description="Quiver vector search engine")
    from quiver import __version__

    parser.add_argument("--version", action="version", version=f"quiver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
