"""``make bench``: this project against its peers, side by side, same upstream, same load.

Every target is uvicorn (chatsite through ``python -m chatsite.serve``, uvicorn's command with
its header cap) with one worker pinned to CPU 0; the upstream and this load generator
are pinned to CPU 1. Scenarios run target by target in alternating rounds (A B C D A B C D) so
drift shows. Results go to bench/results/ as JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import loadgen, resume

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
INTERVAL = 0.02
DELAY = 0.1
SERVER_CPU, CLIENT_CPU = "0", "1"

CHATSITE = {
    "chatsite": {"CHAT_FAST_PATH": "1"},
    # The same site on Django's stock handler, middlewares and ORM statements, and httpx's own
    # transport upstream: what the fast path (docs/internals.md) is worth.
    "chatsite-stock": {"CHAT_FAST_PATH": "0"},
}
"""This project's targets: one environment each, over the same database, Redis and tokens."""

PEERS = {
    "starlette": "bench.peers.starlette_relay:app",
    "fastapi": "bench.peers.fastapi_relay:app",
    "passthrough": "bench.peers.passthrough:app",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if os.cpu_count() and os.cpu_count() > 1 else command


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Target:
    def __init__(
        self,
        name: str,
        app: str,
        env: dict[str, str],
        tokens: list[str] | None,
        server: str = "uvicorn",
    ):
        self.name, self.tokens = name, tokens
        self.app, self.env, self.server = app, env, server
        self.port = free_port()
        command = [
            PYTHON,
            "-m",
            server,
            app,
            "--port",
            str(self.port),
            "--no-access-log",
            "--no-proxy-headers",
            "--backlog",
            "4096",
        ]
        self.process = subprocess.Popen(
            pinned(SERVER_CPU, command),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(RESULTS / f"{name}.log", "w"),  # noqa: SIM115
        )
        wait_for_port(self.port, self.process)

    def token(self, index: int) -> str | None:
        return self.tokens[index % len(self.tokens)] if self.tokens else None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_kb(self) -> int:
        return int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1]) * PAGE_KB

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def spread(values: list[float], with_max: bool = True) -> dict[str, float | None]:
    result = {"p50": percentile(values, 50), "p99": percentile(values, 99)}
    if with_max:
        result["max"] = max(values, default=None)
    return result


def upstream_stats(port: int) -> dict[int, dict]:
    return {r["id"]: r for r in httpx.get(f"http://127.0.0.1:{port}/stats", timeout=30).json()}


def upstream_active(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/active", timeout=30).json()["streams"]


async def upstream_idle(port: int, limit: float = 60.0) -> float:
    """Wait until the upstream writes no stream (the ones a relay that never aborts left
    running after the last run); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit and upstream_active(port):
        await asyncio.sleep(0.25)
    waited = time.monotonic() - started
    if waited >= limit:
        print(f"the upstream still writes {upstream_active(port)} streams after {limit:.0f} s")
    if waited > 0.1:
        await asyncio.sleep(0.5)  # the relay still writing them comes to rest too
    return waited


async def run_streams(target: Target, upstream_port: int, clients: list[list[dict]]) -> dict:
    """Run the clients against one target; measure server CPU, RSS and the client side.

    Each client is a list of streams run back to back, starting ``offset`` seconds into the run.
    Streams marked ``warmup`` (opened while the load ramps up) count for CPU and gaps, not TTFT.
    """
    specs = [spec for client in clients for spec in client]
    settled = await upstream_idle(upstream_port)
    rss_before, cpu_before = target.rss_kb(), target.cpu_seconds()
    own_before = time.process_time()
    peak_rss = rss_before
    started = time.monotonic()

    async def sample_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, target.rss_kb())
            await asyncio.sleep(0.05)

    async def run_client(client: list[dict]) -> list[loadgen.StreamResult]:
        await asyncio.sleep(max(0.0, started + client[0].get("offset", 0) - time.monotonic()))
        results = []
        for spec in client:
            prompt = (
                f"tokens={spec['tokens']} interval={spec['interval']} delay={DELAY} id={spec['id']}"
            )
            results.append(
                await loadgen.stream(
                    target.port,
                    spec["id"],
                    prompt,
                    token=target.token(spec["id"]),
                    close_after=spec.get("close_after"),
                )
            )
        return results

    sampler = asyncio.ensure_future(sample_rss())
    tasks = [asyncio.ensure_future(run_client(client)) for client in clients]
    results = [result for client in await asyncio.gather(*tasks) for result in client]
    warmup = {spec["id"] for spec in specs if spec.get("warmup")}
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0 if any(s.get("close_after") for s in specs) else 0.2)
    sampler.cancel()
    cpu = target.cpu_seconds() - cpu_before
    records = upstream_stats(upstream_port)
    tokens = sum(len(r.arrivals) for r in results)
    ttft_overhead, aborts, never_aborted = [], [], 0
    for result in results:
        record = records.get(result.id)
        if record and result.first_at and record["first_token_at"] and result.id not in warmup:
            upstream_ttft = record["first_token_at"] - record["started"]
            ttft_overhead.append((result.first_at - result.sent_at - upstream_ttft) * 1000)
        if result.closed_at is not None:
            if record and record["aborted_at"]:
                aborts.append((record["aborted_at"] - result.closed_at) * 1000)
            else:
                never_aborted += 1
                if os.environ.get("BENCH_DEBUG"):
                    print("never aborted:", result.id, record, result.closed_at, flush=True)
    gaps = [g * 1000 for r in results for g in r.gaps]
    return {
        "streams": len(specs),
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_second": tokens / elapsed if elapsed else 0,
        "cpu_ms_per_1k_tokens": cpu * 1000 / tokens * 1000 if tokens else None,
        "server_cpu_seconds": cpu,
        "loadgen_cpu_seconds": time.process_time() - own_before,
        "ttft_overhead_ms": spread(ttft_overhead, with_max=False),
        "gap_ms": spread(gaps),
        "rss_kb_per_stream": (peak_rss - rss_before) / len(specs),
        "abort_ms": spread(aborts),
        "never_aborted": never_aborted,
        "waited_for_upstream_seconds": settled,
        "errors": sum(1 for r in results if r.error),
        "error_samples": sorted({r.error for r in results if r.error})[:3],
    }


class Ids:
    def __init__(self) -> None:
        self.next = 1

    def take(self, count: int) -> range:
        first = self.next
        self.next += count
        return range(first, first + count)


def stream_seconds(tokens: int = 100) -> float:
    return DELAY + tokens * INTERVAL


def steady(ids: Ids, streams: int, tokens: int = 100, rounds: int = 3) -> list[list[dict]]:
    """``streams`` held open at once: each client opens its next stream when one ends, and the
    clients start spread over one stream's length, so arrivals are even. The first round is the
    ramp-up."""
    spacing = stream_seconds(tokens) / streams
    return [
        [
            {"id": next_id, "tokens": tokens, "interval": INTERVAL, "warmup": round_ == 0}
            | ({"offset": client * spacing} if round_ == 0 else {})
            for round_, next_id in enumerate(ids.take(rounds))
        ]
        for client in range(streams)
    ]


def burst(ids: Ids, streams: int, tokens: int = 100) -> list[list[dict]]:
    """``streams`` opened in the same instant."""
    return [[{"id": i, "tokens": tokens, "interval": INTERVAL}] for i in ids.take(streams)]


def saturation(ids: Ids, streams: int, tokens: int) -> list[list[dict]]:
    return [[{"id": i, "tokens": tokens, "interval": 0}] for i in ids.take(streams)]


def disconnect_wave(ids: Ids, streams: int) -> list[list[dict]]:
    return [
        [{"id": i, "tokens": 1000, "interval": INTERVAL, "close_after": 10}]
        for i in ids.take(streams)
    ]


def disconnect_churn(ids: Ids, busy: int, streams: int) -> list[list[dict]]:
    """``streams`` short-lived clients, one every 20 ms, while ``busy`` streams keep going."""
    background = [[{"id": i, "tokens": 250, "interval": INTERVAL}] for i in ids.take(busy)]
    churn = [
        [{"id": i, "tokens": 1000, "interval": INTERVAL, "close_after": 10, "offset": 0.02 * n}]
        for n, i in enumerate(ids.take(streams), start=1)
    ]
    return background + churn


async def capacity(target: Target, upstream_port: int, ids: Ids, start: int, limit: int) -> dict:
    """Raise N until the gap p99 passes 1.3x the upstream's interval or an error appears.

    A failing step is tried once more before the search stops, so one noisy run does not end it.
    """
    held, steps, streams = 0, [], start
    while streams <= limit:
        for _attempt in range(2):
            result = await run_streams(target, upstream_port, steady(ids, streams, rounds=2))
            ok = result["errors"] == 0 and result["gap_ms"]["p99"] <= 1.3 * INTERVAL * 1000
            steps.append(
                {"streams": streams, "gap_p99_ms": result["gap_ms"]["p99"],
                 "errors": result["errors"], "held": ok}
            )  # fmt: skip
            if ok:
                break
        if not ok:
            break
        held = streams
        streams = max(streams + 1, int(streams * 1.25))
    return {"streams_per_core": held, "steps": steps}


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "pinning": f"servers on CPU {SERVER_CPU}; upstream and load generator on CPU "
        f"{CLIENT_CPU} (taskset)",
    }


def chatsite_env(base: dict[str, str], upstream_url: str) -> tuple[dict[str, str], list[str]]:
    database = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chatsite_bench"
    )
    redis = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    name = database.rsplit("/", 1)[1]
    admin = database.rsplit("/", 1)[0] + "/postgres"
    import psycopg

    with psycopg.connect(admin, autocommit=True) as connection:
        if not connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')
    env = {
        **base,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-" + "x" * 50,
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "CHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_MAX_RETRIES": "0",
        "CHAT_MODEL": "bench",
        # The bench upstream answers streams only: no GET /v1/models for the list on offer.
        "CHAT_MODELS": "bench",
        "CHAT_RATE_LIMIT": "100000/m",
        "CHAT_STREAMS_PER_USER": "10",
        "CACHE_KEY_PREFIX": f"bench-{os.getpid()}",
        # The disconnect scenarios measure how fast a relay closes the upstream when its client
        # leaves; the peers have no detach grace, so the project runs without one (by default a
        # reply nobody reads goes on for 10 s, by design, for a client to come back).
        "CHAT_DETACH_GRACE_SECONDS": "0",
        # The peers make no title request after a new conversation's first reply; nor does the
        # project here (the bench upstream answers streams only).
        "CHAT_AUTO_TITLES": "0",
    }
    setup = subprocess.run(
        [PYTHON, "-m", "bench.chatsite_setup", "500"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return env, setup.stdout.split()


async def main(quick: bool, only: list[str] | None) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(CLIENT_CPU)}) if (os.cpu_count() or 1) > 1 else None
    upstream_port = free_port()
    upstream = subprocess.Popen(
        pinned(CLIENT_CPU, [PYTHON, "-m", "bench.upstream", "--port", str(upstream_port)]), cwd=ROOT
    )
    wait_for_port(upstream_port, upstream)
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    base = {**os.environ, "OPENAI_BASE_URL": upstream_url, "PYTHONPATH": str(ROOT)}
    env, tokens = chatsite_env(base, upstream_url)
    wanted = {*CHATSITE, *PEERS} if not only else set(only)
    targets = []
    for name, overrides in CHATSITE.items():
        if name in wanted:
            # As in production: uvicorn's command with the header cap (the peers run bare uvicorn).
            targets.append(
                Target(
                    name,
                    "chatsite.asgi:application",
                    {**env, **overrides},
                    tokens,
                    server="chatsite.serve",
                )
            )
    targets += [Target(name, app, base, None) for name, app in PEERS.items() if name in wanted]
    ids = Ids()
    for target in targets:
        await run_streams(target, upstream_port, burst(ids, 20, tokens=5))
    plan = {
        "steady": [20] if quick else [50, 100, 200],
        "rounds": 1 if quick else 2,
        "burst": 20 if quick else 50,
        "saturation": (20, 200) if quick else (50, 1000),
        "wave": 20 if quick else 50,
        "churn": (20, 40) if quick else (100, 200),
        "capacity": None if quick else (10, 2000),
        "resume": 20 if quick else 50,
        "cold": 200,
    }
    resumed = None
    cold: dict[str, dict] = {}
    scenarios: dict[str, dict[str, list[dict]]] = {}

    def record(scenario: str, target: Target, result: dict) -> None:
        scenarios.setdefault(scenario, {}).setdefault(target.name, []).append(result)
        print(f"{scenario:>22} {target.name:>12}: {summary(result)}", flush=True)

    try:
        for _ in range(plan["rounds"]):
            for streams in plan["steady"]:
                for target in targets:
                    await asyncio.sleep(0.5)
                    record(
                        f"steady {streams}",
                        target,
                        await run_streams(target, upstream_port, steady(ids, streams)),
                    )
            for target in targets:
                record(
                    f"burst {plan['burst']}",
                    target,
                    await run_streams(target, upstream_port, burst(ids, plan["burst"])),
                )
            for target in targets:
                record(
                    "saturation",
                    target,
                    await run_streams(target, upstream_port, saturation(ids, *plan["saturation"])),
                )
            for target in targets:
                record(
                    "disconnect wave",
                    target,
                    await run_streams(target, upstream_port, disconnect_wave(ids, plan["wave"])),
                )
                record(
                    "disconnect churn",
                    target,
                    await run_streams(target, upstream_port, disconnect_churn(ids, *plan["churn"])),
                )
        if targets and targets[0].name == "chatsite":
            resumed = await resume_scenario(
                env, targets[0].token, upstream_port, ids, plan["resume"]
            )
            print(f"{'resume':>22} {'chatsite':>12}: {resume_summary(resumed)}", flush=True)
        for target in targets:
            cold[target.name] = await cold_rss(target, upstream_port, ids, plan["cold"])
            print(
                f"{'cold ' + str(plan['cold']):>22} {target.name:>12}: "
                f"{fmt(cold[target.name]['rss_kb_per_stream'])} KB per stream",
                flush=True,
            )
        capacities = {}
        if plan["capacity"]:
            for target in targets:
                capacities[target.name] = await capacity(
                    target, upstream_port, ids, *plan["capacity"]
                )
                print(
                    f"capacity {target.name}: {capacities[target.name]['streams_per_core']}",
                    flush=True,
                )
    finally:
        for target in targets:
            target.stop()
        upstream.terminate()
    return {
        "machine": machine(),
        "plan": plan,
        "scenarios": scenarios,
        "capacity": capacities,
        "resume": resumed,
        "cold": cold,
    }


async def cold_rss(target: Target, upstream_port: int, ids: Ids, streams: int) -> dict:
    """RSS per stream as an operator sees it: a fresh process of the target (same command,
    same environment) taking ``streams`` held-open streams for the first time, counted from
    its RSS before its first request."""
    fresh = Target(f"{target.name}-cold", target.app, target.env, target.tokens, target.server)
    try:
        result = await run_streams(fresh, upstream_port, steady(ids, streams, rounds=1))
    finally:
        fresh.stop()
    return {"streams": streams, "rss_kb_per_stream": result["rss_kb_per_stream"],
            "errors": result["errors"]}  # fmt: skip


async def resume_scenario(
    env: dict[str, str],
    token_for: Callable[[int], str | None],
    upstream_port: int,
    ids: Ids,
    clients: int,
) -> dict:
    """Two chatsite workers sharing Redis, with the default detach grace; clients drop after
    10 tokens on one and resume on the other (bench/resume.py)."""
    workers = {**env, "CHAT_DETACH_GRACE_SECONDS": "10"}
    one = Target("chatsite-a", "chatsite.asgi:application", workers, None, server="chatsite.serve")
    two = Target("chatsite-b", "chatsite.asgi:application", workers, None, server="chatsite.serve")
    try:
        await upstream_idle(upstream_port)
        return await resume.resume_run(
            one.port, two.port, token_for, clients=clients, ids=ids.take(clients)
        )
    finally:
        one.stop()
        two.stop()


def resume_summary(result: dict) -> str:
    latency = result["latency_ms"]
    return (
        f"resumed {result['resumed']}/{result['clients']}  latency p50/p99/max "
        f"{fmt(latency['p50'])}/{fmt(latency['p99'])}/{fmt(latency['max'])} ms  "
        f"exact {result['exact']}  gaps or duplicates {result['gaps_or_duplicates']}  "
        f"errors {result['errors']}"
    )


def summary(result: dict) -> str:
    ttft = result["ttft_overhead_ms"]
    waited = result["waited_for_upstream_seconds"]
    return (
        f"{result['tokens_per_second']:8.0f} tok/s  cpu {fmt(result['cpu_ms_per_1k_tokens'])} "
        f"ms/1k  ttft+ {fmt(ttft['p50'])}/{fmt(ttft['p99'])}"
        f"  gap p99 {fmt(result['gap_ms']['p99'])}  abort p99 {fmt(result['abort_ms']['p99'])}"
        f"  never {result['never_aborted']}  errors {result['errors']}"
    ) + (f"  (waited {waited:.1f} s for the upstream's leftovers)" if waited > 0.1 else "")


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_of(runs: list[dict], path: tuple[str, ...]) -> float | None:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        if value is not None:
            values.append(value)
    return statistics.fmean(values) if values else None


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; "
        f"{info['pinning']}. {info['date']}.",
        "",
    ]
    columns = [
        "target",
        "tokens/s",
        "CPU ms/1k tok",
        "× floor",
        "TTFT+ p50/p99 ms",
        "gap p50/p99/max ms",
        "RSS KB/stream",
        "abort p50/p99/max ms",
        "never aborted",
        "errors",
    ]
    for scenario, by_target in report["scenarios"].items():
        floor = mean_of(by_target.get("passthrough", []), ("cpu_ms_per_1k_tokens",))
        lines += [
            f"### {scenario}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for name, runs in by_target.items():
            cpu = mean_of(runs, ("cpu_ms_per_1k_tokens",))
            row = [
                name,
                fmt(mean_of(runs, ("tokens_per_second",)), 0),
                fmt(cpu),
                fmt(cpu / floor if cpu and floor else None, 2),
                f"{fmt(mean_of(runs, ('ttft_overhead_ms', 'p50')))} / "
                f"{fmt(mean_of(runs, ('ttft_overhead_ms', 'p99')))}",
                " / ".join(fmt(mean_of(runs, ("gap_ms", k))) for k in ("p50", "p99", "max")),
                fmt(mean_of(runs, ("rss_kb_per_stream",))),
                " / ".join(fmt(mean_of(runs, ("abort_ms", k))) for k in ("p50", "p99", "max")),
                str(sum(r["never_aborted"] for r in runs)),
                str(sum(r["errors"] for r in runs)),
            ]
            lines.append("| " + " | ".join(row) + " |")
        own = ", ".join(
            f"{name} {fmt(mean_of(runs, ('loadgen_cpu_seconds',)))} s of "
            f"{fmt(mean_of(runs, ('seconds',)))} s"
            for name, runs in by_target.items()
        )
        lines += ["", f"Load generator's own CPU: {own}.", ""]
    if report.get("resume"):
        lines += [
            "### resume (clients drop after 10 of 100 tokens and reconnect to the other of two "
            "workers with Last-Event-ID)",
            "",
            resume_summary(report["resume"]),
            "",
        ]
    if report.get("cold"):
        lines += [
            "### cold process (RSS per stream: a fresh worker's first streams, held open)",
            "",
            "| target | streams | RSS KB/stream | errors |",
            "|---|---|---|---|",
        ]
        for name, found in report["cold"].items():
            lines.append(
                f"| {name} | {found['streams']} | {fmt(found['rss_kb_per_stream'])} | "
                f"{found['errors']} |"
            )
        lines.append("")
    if report["capacity"]:
        lines += [
            "### capacity (streams per core: N held open, 100 tokens at 50 tokens/s, "
            "gap p99 ≤ 26 ms)",
            "",
            "| target | streams | steps (N: gap p99 ms) |",
            "|---|---|---|",
        ]
        for name, found in report["capacity"].items():
            steps = ", ".join(f"{s['streams']}: {fmt(s['gap_p99_ms'])}" for s in found["steps"])
            lines.append(f"| {name} | {found['streams_per_core']} | {steps} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenario = next(iter(report["scenarios"]))
    names = list(report["scenarios"][scenario])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        gaps = [
            (r["gap_ms"]["p50"], r["gap_ms"]["p99"]) for r in report["scenarios"][scenario][name]
        ]
        left.scatter([g[0] for g in gaps], [g[1] for g in gaps], label=name)
    left.axhline(1.3 * INTERVAL * 1000, linestyle="--", color="grey", label="1.3× interval")
    left.set(title=f"Inter-token gap, {scenario}", xlabel="p50 ms", ylabel="p99 ms")
    left.legend()
    saturation = report["scenarios"].get("saturation", {})
    right.bar(
        list(saturation), [mean_of(runs, ("cpu_ms_per_1k_tokens",)) for runs in saturation.values()]
    )
    right.set(title="Server CPU per 1,000 tokens (saturation)", ylabel="ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 90 s)")
    parser.add_argument("--only", nargs="*", help="target names to run")
    args = parser.parse_args()
    report = asyncio.run(main(args.quick, args.only))
    stem = "quick" if args.quick else "latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    plot(report, RESULTS / f"{stem}.png")
    print(markdown(report))
