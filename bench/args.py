"""argparse value types shared by the benchmark commands (no heavy imports: the CLI loads it)."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """argparse type: "16,32,64" -> [16, 32, 64]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """argparse type: "0.5,0.1" -> [0.5, 0.1]."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_dataset_arguments(p: argparse.ArgumentParser, limit_help: str, limit_default: int | None = None,
                          queries_help: str = "use the first N queries") -> None:
    """--dataset / --limit / --queries / --k, the same for every benchmark command."""
    p.add_argument("--dataset", help="HDF5 path or synthetic[:NxD][:metric] (default: the "
                                     "WordNet file, else synthetic:20000x384:cosine)")
    p.add_argument("--limit", type=int, default=limit_default, help=limit_help)
    p.add_argument("--queries", type=int, help=queries_help)
    p.add_argument("--k", type=int, default=10)
