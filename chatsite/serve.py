"""``python -m chatsite.serve <uvicorn's arguments>``: the uvicorn command, with the header cap.

Everything is uvicorn's own command line (its options, ``UVICORN_*`` variables, help, exit
codes); the one difference is that ``--http auto`` (the default) and ``--http httptools`` serve
with ``chatsite.http_protocol.CappedHttpToolsProtocol``, which answers 431 to a request head
over ``CHAT_MAX_HEADER_BYTES``. Other ``--http`` choices (h11, which has its own
``--h11-max-incomplete-event-size``) are left as they are.

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

import logging
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from uvicorn.main import main as uvicorn_command

CAPPED_CHOICES = ("auto", "httptools")
SHUTDOWN_GRACE_ENV_NAME = "CHAT_SHUTDOWN_GRACE_SECONDS"

# Its own handler: the launcher logs before uvicorn (or Django) has configured logging.
logger = logging.getLogger("chatsite.serve")
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
logger.addHandler(_handler)
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
    count = workers or int(environ.get("WEB_CONCURRENCY") or 1)
    if count > 1 and not environ.get("REDIS_URL"):
        raise click.ClickException(
            f"{count} workers need REDIS_URL: without Redis each worker would keep its own rate "
            "limits, stream slots, stops and resumable replies. Set REDIS_URL, or run one worker."
        )


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
    callback: Callable[..., Any] = stock.callback  # type: ignore[assignment]

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
