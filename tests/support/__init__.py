"""Helpers the tests (and the benchmarks) share: checkpoints, served engines, graphs, oracles. Not product code."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]          # the repository root
TINY_ASSETS = REPO / "builder" / "assets" / "tiny"  # the shipped tiny model
BIN = Path(sys.executable).parent                  # the console scripts of the environment running the tests
