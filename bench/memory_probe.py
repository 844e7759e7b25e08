"""The cold-process memory figure alone, repeated: ``python -m bench.memory_probe [--runs 3]
[--streams 200] [targets...]``.

Each run starts a fresh process of each target (as ``make bench``'s ``cold 200`` scenario does),
opens ``--streams`` held-open streams and prints the RSS growth per stream, then the median of
the runs per target. A few minutes instead of the full bench's fifteen, for work on the figure.
"""

import argparse
import asyncio
import os
import statistics
import subprocess

from bench.run import (
    CHATSITE,
    CLIENT_CPU,
    PEERS,
    PYTHON,
    ROOT,
    Ids,
    Target,
    chatsite_env,
    cold_rss,
    free_port,
    pinned,
    wait_for_port,
)


async def probe(names: list[str], runs: int, streams: int) -> dict[str, list[float]]:
    os.sched_setaffinity(0, {int(CLIENT_CPU)}) if (os.cpu_count() or 1) > 1 else None
    upstream_port = free_port()
    upstream = subprocess.Popen(
        pinned(CLIENT_CPU, [PYTHON, "-m", "bench.upstream", "--port", str(upstream_port)]), cwd=ROOT
    )
    found: dict[str, list[float]] = {name: [] for name in names}
    try:
        wait_for_port(upstream_port, upstream)
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        base = {**os.environ, "OPENAI_BASE_URL": upstream_url, "PYTHONPATH": str(ROOT)}
        env, tokens = chatsite_env(base, upstream_url)
        ids = Ids()
        for _ in range(runs):
            for name in names:
                if name in CHATSITE:
                    target = Target(
                        name,
                        "chatsite.asgi:application",
                        {**env, **CHATSITE[name]},
                        tokens,
                        server="chatsite.serve",
                    )
                else:
                    target = Target(name, PEERS[name], base, None)
                try:
                    result = await cold_rss(target, upstream_port, ids, streams)
                finally:
                    target.stop()
                found[name].append(result["rss_kb_per_stream"])
                print(
                    f"{name:>16}: {result['rss_kb_per_stream']:.1f} KB per stream"
                    f" (errors {result['errors']})",
                    flush=True,
                )
    finally:
        upstream.terminate()
    for name, values in found.items():
        print(f"{name:>16}: median {statistics.median(values):.1f} KB per stream over {runs}")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", default=["chatsite", "passthrough"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(probe(args.targets, args.runs, args.streams))
