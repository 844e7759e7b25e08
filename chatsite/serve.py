"""``python -m chatsite.serve <uvicorn's arguments>``: the uvicorn command, with the header cap.

Everything is uvicorn's own command line (its options, ``UVICORN_*`` variables, help, exit
codes); the one difference is that ``--http auto`` (the default) and ``--http httptools`` serve
with ``chatsite.http_protocol.CappedHttpToolsProtocol``, which answers 431 to a request head
over ``CHAT_MAX_HEADER_BYTES``. Other ``--http`` choices (h11, which has its own
``--h11-max-incomplete-event-size``) are left as they are.

With several workers (``--workers``, ``WEB_CONCURRENCY``) and metrics on (``CHAT_METRICS``),
the launcher also gives the workers a directory for their metrics (``PROMETHEUS_MULTIPROC_DIR``,
prometheus_client's multi-process mode, so that ``/metrics`` adds every worker up): a fresh
temporary one for the run, removed when the server stops; or the one the variable names,
emptied of the last run's files first and left in place.

How: a click command with uvicorn's own parameters whose callback swaps the ``http`` value for
the class before calling uvicorn's. The class, not an import string, reaches ``uvicorn.Config``
(``http`` accepts a protocol class), so it travels to the processes ``--workers N`` and
``--reload`` spawn (pickled by reference; each imports ``chatsite.http_protocol``) without
touching uvicorn's module globals, which a spawned process would import afresh.

Below uvicorn's public API: ``uvicorn.main.main`` is a click command whose parameters include
``http`` and whose callback passes it on to ``uvicorn.run``/``Config`` (the protocol's own
shortcuts are listed in ``chatsite/http_protocol.py``). Before swapping, the launcher runs
``chatsite.http_protocol.problems()``; if that or the command's shape is not as expected it
logs a warning and serves with stock uvicorn, uncapped. A malformed ``CHAT_MAX_HEADER_BYTES``
stops it instead, as a malformed setting does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from uvicorn.main import main as uvicorn_command

CAPPED_CHOICES = ("auto", "httptools")
SHUTDOWN_GRACE_ENV_NAME = "CHAT_SHUTDOWN_GRACE_SECONDS"
METRICS_ENV_NAME = "CHAT_METRICS"
METRICS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: set, it keeps each process's metrics in files there."""

# Its own handler: the launcher logs before uvicorn (or Django) has configured logging.
logger = logging.getLogger("chatsite.serve")
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
logger.addHandler(_handler)
logger.setLevel(logging.INFO)
logger.propagate = False


def command_problems(command: Any = None) -> list[str]:
    """What in uvicorn's click command is not as the launcher expects; empty when all is well."""
    command = uvicorn_command if command is None else command
    if not isinstance(command, click.Command) or not callable(command.callback):
        return ["uvicorn.main.main is no longer a click command with a callback"]
    if "http" not in {parameter.name for parameter in command.params}:
        return ["uvicorn.main.main no longer has an 'http' parameter"]
    return []


def capped_protocol() -> tuple[type | None, list[str]]:
    """The capped protocol class, or None and why not (uvicorn changed shape)."""
    try:  # imported here: if uvicorn changed, this import is what fails
        from chatsite import http_protocol
    except ImportError as exc:
        return None, [f"chatsite.http_protocol cannot be imported: {exc!r}"]
    found = http_protocol.problems()
    return (None, found) if found else (http_protocol.CappedHttpToolsProtocol, [])


def check_limit(env_file: str | None) -> None:
    """Refuse a malformed CHAT_MAX_HEADER_BYTES before serving, including one that uvicorn's
    ``--env-file`` would set (the protocol reads the variable at its first connection, after
    uvicorn has loaded that file, which does not override the environment)."""
    from chatsite.http_protocol import max_header_bytes_from_env  # as capped_protocol()

    try:
        max_header_bytes_from_env(environment(env_file))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def check_shared_state(workers: int | None, env_file: str | None) -> None:
    """Refuse several workers without REDIS_URL: each would keep its own limits, stream slots,
    stops and resumable replies, and nothing would say so."""
    environ = environment(env_file)
    count = worker_count(workers, environ)
    if count > 1 and not environ.get("REDIS_URL"):
        raise click.ClickException(
            f"{count} workers need REDIS_URL: without Redis each worker would keep its own rate "
            "limits, stream slots, stops and resumable replies. Set REDIS_URL, or run one worker."
        )


def worker_count(workers: int | None, environ: dict[str, str]) -> int:
    return workers or int(environ.get("WEB_CONCURRENCY") or 1)


@contextlib.contextmanager
def metrics_directory(workers: int | None, env_file: str | None) -> Iterator[Path | None]:
    """While serving, the directory where the workers keep their metrics (set for them as
    PROMETHEUS_MULTIPROC_DIR), or None with one worker or with metrics off: an operator's
    (created if missing, emptied of ``*.db`` files from an earlier run, kept), else a fresh
    temporary one, removed when the server stops."""
    environ = environment(env_file)
    given = environ.get(METRICS_DIRECTORY, "").strip()
    os.environ.pop(METRICS_DIRECTORY, None)  # set again below only if it is used
    metrics_on = environ.get(METRICS_ENV_NAME, "1").strip().lower() not in OFF
    if not metrics_on or (worker_count(workers, environ) <= 1 and not given):
        yield None
        return
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="chatsite-metrics-"))
    os.environ[METRICS_DIRECTORY] = str(directory)
    logger.info("Workers keep their metrics in %s", directory)
    try:
        yield directory
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


OFF = {"0", "false", "no", "off"}


def shutdown_grace(env_file: str | None) -> int:
    """Seconds a worker told to stop (SIGTERM, SIGINT) gives its running replies to finish:
    ``CHAT_SHUTDOWN_GRACE_SECONDS`` (20), unless ``--timeout-graceful-shutdown`` says. Then
    uvicorn cancels the requests, and the replies still running are saved ``interrupted``."""
    value = environment(env_file).get(SHUTDOWN_GRACE_ENV_NAME) or "20"
    if not value.isdigit():
        raise click.ClickException(
            f"{SHUTDOWN_GRACE_ENV_NAME} must be a whole number of seconds, not {value!r}"
        )
    return int(value)


def environment(env_file: str | None) -> dict[str, str]:
    """The variables the workers will see: uvicorn's ``--env-file``, under the environment."""
    environ: dict[str, str] = {}
    if env_file:
        from dotenv import dotenv_values  # uvicorn's own --env-file reader

        environ.update((k, v) for k, v in dotenv_values(env_file).items() if v is not None)
    environ.update(os.environ)
    return environ


def build_command(stock: click.Command | None = None) -> click.Command:
    """uvicorn's command with the http protocol swapped for the capped one where it applies."""
    stock = uvicorn_command if stock is None else stock
    callback = stock.callback
    if callback is None:
        raise RuntimeError(f"the command {stock.name!r} has no callback to wrap")

    def serve(**params: Any) -> Any:
        check_shared_state(params.get("workers"), params.get("env_file"))
        if params.get("timeout_graceful_shutdown") is None:
            params["timeout_graceful_shutdown"] = shutdown_grace(params.get("env_file"))
        if params["http"] in CAPPED_CHOICES:
            protocol, found = capped_protocol()
            if protocol is None:
                _warn_uncapped(found)
            else:
                check_limit(params.get("env_file"))
                params["http"] = protocol
        with metrics_directory(params.get("workers"), params.get("env_file")):
            return callback(**params)

    return click.Command(
        name=stock.name,
        params=stock.params,
        callback=serve,
        context_settings=stock.context_settings,
        help=stock.help,
    )


def _warn_uncapped(found: list[str]) -> None:
    logger.warning(
        "Serving with stock uvicorn, without the request-head cap (CHAT_MAX_HEADER_BYTES): "
        "uvicorn changed where chatsite/http_protocol.py relies on it: %s",
        "; ".join(found),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    prog_name = "python -m chatsite.serve"
    found = command_problems()
    if found:
        _warn_uncapped(found)
        sys.argv = ["uvicorn", *args]
        runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
        return
    build_command().main(args=args, prog_name=prog_name)


if __name__ == "__main__":
    main()
