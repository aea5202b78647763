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
