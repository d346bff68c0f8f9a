"""1,000 random corruptions of a tiny checkpoint: each a named error or a correct conversion, memory bounded,
the destination untouched (tests/support/fuzz_checkpoint.py does the work in a child process under RLIMIT_AS)."""

import json
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.reliability


def test_thousand_corruptions_end_in_named_errors_or_correct_conversions(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tests.support.fuzz_checkpoint", "--cases", "1000", "--seed", "0",
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["n_failures"] == 0, "\n\n".join(result["failures"])
    assert result["cases"] == 1000 == result["errors"] + result["converted"]
    # every kind of corruption was drawn and most of them were refused
    kinds = {k.split()[1] for k in result["outcomes"]}
    assert kinds == {"config", "header", "tensor", "files"}
    assert result["errors"] > 700 and result["converted"] > 50
    # far under 1 GB: the limit itself (RLIMIT_AS) would have turned a runaway into a reported MemoryError
    assert result["max_rss_growth_mib"] < 256
