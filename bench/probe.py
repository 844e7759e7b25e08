"""One scenario of the bench alone, repeated, for work on one figure (minutes, not the full
bench's fifteen):

- ``python -m bench.probe cold [--runs 3] [--streams 200] [targets...]``: the cold-process
  memory figure (``make bench``'s ``cold 200``): a fresh process of each target takes
  ``--streams`` held-open streams; RSS growth per stream, then the median per target.
- ``python -m bench.probe steady [--runs 4] [--streams 50] [targets...]``: ``steady N``
  rounds, the targets alternating, as the bench runs them.
- ``python -m bench.probe resume [--runs 4] [--streams 50]``: ``make bench``'s resume scenario
  (two workers of the project; ``--streams`` clients drop and reattach through the other).

Targets: the bench's (``chatsite``, ``chatsite-stock``, the peers) and ``chatsite-nometrics``
(the site with ``CHAT_METRICS=0``, to see what recording the metrics costs).
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
    burst,
    chatsite_env,
    cold_rss,
    free_port,
    pinned,
    resume_scenario,
    resume_summary,
    run_streams,
    steady,
    summary,
    wait_for_port,
)

VARIANTS = {**CHATSITE, "chatsite-nometrics": {"CHAT_FAST_PATH": "1", "CHAT_METRICS": "0"}}


def target_for(name: str, env: dict[str, str], base: dict[str, str], tokens: list[str]) -> Target:
    if name in VARIANTS:
        return Target(
            name,
            "chatsite.asgi:application",
            {**env, **VARIANTS[name]},
            tokens,
            server="chatsite.serve",
        )
    return Target(name, PEERS[name], base, None)


async def probe(scenario: str, names: list[str], runs: int, streams: int) -> None:
    os.sched_setaffinity(0, {int(CLIENT_CPU)}) if (os.cpu_count() or 1) > 1 else None
    upstream_port = free_port()
    upstream = subprocess.Popen(
        pinned(CLIENT_CPU, [PYTHON, "-m", "bench.upstream", "--port", str(upstream_port)]), cwd=ROOT
    )
    reported = ["resume"] if scenario == "resume" else names
    found: dict[str, list[dict]] = {name: [] for name in reported}
    targets: list[Target] = []
    try:
        wait_for_port(upstream_port, upstream)
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        base = {**os.environ, "OPENAI_BASE_URL": upstream_url, "PYTHONPATH": str(ROOT)}
        env, tokens = chatsite_env(base, upstream_url)
        ids = Ids()
        if scenario == "steady":
            targets = [target_for(name, env, base, tokens) for name in names]
            for target in targets:
                await run_streams(target, upstream_port, burst(ids, 20, tokens=5))
        if scenario == "resume":
            for _ in range(runs):
                # The scenario starts its own two workers of the project, with the bench's tokens.
                result = await resume_scenario(
                    env, lambda index: tokens[index % len(tokens)], upstream_port, ids, streams
                )
                print(f"{'resume':>18}: {resume_summary(result)}", flush=True)
                found["resume"].append(result)
        else:
            for _ in range(runs):
                for index, name in enumerate(names):
                    if scenario == "steady":
                        await asyncio.sleep(0.5)
                        result = await run_streams(
                            targets[index], upstream_port, steady(ids, streams)
                        )
                        print(f"{name:>18}: {summary(result)}", flush=True)
                    else:
                        template = target_for(name, env, base, tokens)
                        try:
                            result = await cold_rss(template, upstream_port, ids, streams)
                        finally:
                            template.stop()
                        print(
                            f"{name:>18}: {result['rss_kb_per_stream']:.1f} KB per stream"
                            f" (errors {result['errors']})",
                            flush=True,
                        )
                    found[name].append(result)
    finally:
        for target in targets:
            target.stop()
        upstream.terminate()
    for name, results in found.items():
        if scenario == "resume":
            p99 = [r["latency_ms"]["p99"] for r in results]
            print(f"{name:>18}: p99 per run {', '.join(f'{v:.1f}' for v in p99)} ms")
        elif scenario == "steady":
            cpu = statistics.mean(r["cpu_ms_per_1k_tokens"] for r in results)
            ttft = statistics.mean(r["ttft_overhead_ms"]["p50"] for r in results)
            print(f"{name:>18}: mean CPU {cpu:.1f} ms per 1k tokens, TTFT overhead p50 {ttft:.1f}")
        else:
            rss = statistics.median(r["rss_kb_per_stream"] for r in results)
            print(f"{name:>18}: median {rss:.1f} KB per stream over {len(results)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["cold", "steady", "resume"])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--streams", type=int)
    args = parser.parse_intermixed_args()
    cold = args.scenario == "cold"
    asyncio.run(
        probe(
            args.scenario,
            args.targets
            or (["chatsite"] if args.scenario == "resume" else ["chatsite", "passthrough"]),
            args.runs or (3 if cold else 4),
            args.streams or (200 if cold else 50),
        )
    )
