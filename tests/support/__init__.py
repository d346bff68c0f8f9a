"""Helpers the tests (and the benchmarks) share: checkpoints, served engines, graphs, oracles. Not product code."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]          # the repository root
TINY_ASSETS = REPO / "builder" / "assets" / "tiny"  # the shipped tiny model
