"""Debian's nginx, started on a loopback port with the shipped deploy/nginx.conf in front of
running servers; its access log records which worker answered each request."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{(LISTEN|SERVER_NAME|UPSTREAM_SERVERS)\}")


def nginx_binary() -> str | None:
    return (
        os.environ.get("NGINX_PATH")
        or shutil.which("nginx")
        or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    )


def render(values: dict[str, str], replacements: dict[str, str] | None = None) -> str:
    """The template with its placeholders filled, as envsubst with their list does; each of
    ``replacements`` (a variant of the template) replaces text the template must have."""
    text = TEMPLATE.read_text()
    for old, new in (replacements or {}).items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


class Nginx:
    def __init__(
        self,
        binary: str,
        directory: Path,
        port: int,
        upstream_ports: list[int],
        replacements: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.directory = directory
        self.access_log = directory / "access.log"
        site = render(
            {
                "LISTEN": f"127.0.0.1:{port}",
                "SERVER_NAME": "localhost",
                "UPSTREAM_SERVERS": " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports),
            },
            replacements,
        )
        (directory / "site.conf").write_text(site)
        temp = directory / "temp"
        temp.mkdir(exist_ok=True)
        (directory / "nginx.conf").write_text(
            f"""daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    log_format upstream '$remote_addr $upstream_addr $status $request_uri';
    access_log {self.access_log} upstream;
    include {directory}/site.conf;
}}
"""
        )
        self._stderr = open(directory / "stderr.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, "-c", str(directory / "nginx.conf"), "-p", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._stderr.close()
                raise RuntimeError(f"nginx exited: {(self.directory / 'stderr.log').read_text()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def upstreams_used(self) -> list[str]:
        """The worker address of each request logged so far."""
        return [line.split()[1] for line in self.access_log.read_text().splitlines() if line]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._stderr.close()
