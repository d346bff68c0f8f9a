"""Memory of the served models over rounds of concurrent return_context_logits requests (real tritonserver, tiny
engine): private resident memory (RssAnon, not the shared-memory pools) per process after each round.

    .venv/bin/python benchmarks/context_logits_memory.py [--rounds 8] [--concurrent 8] [--words 700]

The tensorrt_llm model computes the prompt logits; its row should stay flat after the first round. The
tritonserver row is upstream's own buffers (gRPC, response copies), shown for comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.client import generate_many  # noqa: E402
from deploy.server import TritonServer  # noqa: E402
from tests.support.serving import make_tiny_engine  # noqa: E402
from model_repo.write import write_model_repo  # noqa: E402


def anon_rss_mib(pgid: int) -> dict[str, float]:
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            name = next((a.decode() for a in argv if a.endswith(b"_0_0")), Path(argv[0].decode()).name)
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    out[name] = int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            continue
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--words", type=int, default=700)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_tiny_engine(Path(tmp) / "engine", max_seq_len=2048, max_batch_size=a.concurrent)
        srv = TritonServer(write_model_repo(engine, max_context_logits_bytes=64 * 2**20),
                           log_file=Path(tmp) / "log", exit_timeout_s=5)
        srv.start(240)
        try:
            prompts = [f"{i} " + "the king and the queen " * (a.words // 5) for i in range(a.concurrent)]
            rows = []
            for _ in range(a.rounds):
                res = generate_many(srv.grpc_url, prompts, max_tokens=2, raw=True, return_context_logits=True)
                rows.append(anon_rss_mib(srv.proc.pid))
            per_round = sum(r.context_logits.nbytes for r in res) / 2**20
        finally:
            srv.stop()
    names = sorted(rows[0])
    print(f"{a.concurrent} concurrent requests, {per_round:.0f} MiB of prompt logits per round; RssAnon MiB:")
    print("round  " + "  ".join(f"{n:>22}" for n in names))
    for i, r in enumerate(rows):
        print(f"{i:5d}  " + "  ".join(f"{r.get(n, 0):22.0f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
