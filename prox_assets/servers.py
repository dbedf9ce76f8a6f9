"""Real servers on loopback, for ``prox bench scale`` and the tests: start, wait, stop, keep logs.

``Server`` runs a process in its own session (stopping it stops its children: the runs a code
server launched) and logs to a file whose tail goes into every error. The Dagster code server's
command line is built in one place (``code_server_command``), as the image runs it
(``deploy/Dockerfile``'s CMD, checked by ``tests/deploy/test_deploy_files.py``), with the code
location the Helm values name (``code_location_args``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent

CODE_LOCATION_MODULE = "prox_assets.definitions"
CODE_LOCATION_NAME = "prox"  # as pyproject's [tool.dagster] and workspace.yaml name it


class Server:
    """A process in its own session (so that stopping it stops its children too), logging to a file."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[object],
        log_dir: Path,
        env: dict | None = None,
        cwd: Path | None = None,
    ):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop(): the process outlives this call)
        self.proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def tail(self, n: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()


def answers(url: str) -> bool:
    """Whether ``url`` answers at all (any HTTP status)."""
    try:
        urllib.request.urlopen(url, timeout=5)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], object],
    what: str,
    timeout: float,
    servers: Sequence[Server],
    poll: float = 1.0,
):
    """``predicate()``'s first true value, checking meanwhile that every server is alive; the
    servers' log tails in the error when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for s in servers:
            s.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} not reached in {timeout:.0f}s\n"
                + "\n".join(f"--- {s.name}\n{s.tail(1500)}" for s in servers)
            )
        time.sleep(poll)


def wait_http(url: str, server: Server, timeout: float = 180) -> None:
    """Until ``url`` answers at all (any HTTP status)."""
    wait_until(lambda: answers(url), f"{server.name}: {url} answering", timeout, [server])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(taken: set[int] | None = None) -> int:
    """A free loopback port whose +10000 twin is free too (SeaweedFS puts gRPC there), neither in
    ``taken``; both are added to it."""
    taken = set() if taken is None else taken
    while True:
        port = random.randrange(20000, 45000)
        if not ({port, port + 10000} & taken) and _port_free(port) and _port_free(port + 10000):
            taken.update({port, port + 10000})
            return port


# --- the Dagster code server ---------------------------------------------------------------------
def code_location_args() -> list[str]:
    """The code location's arguments to ``dagster code-server start`` / ``dagster api grpc``."""
    return ["-m", CODE_LOCATION_MODULE, "--location-name", CODE_LOCATION_NAME]


def code_server_command(
    port: int, host: str = "127.0.0.1", dagster: str | Path = BIN / "dagster"
) -> list[str]:
    """``dagster code-server start`` serving prox_assets.definitions over gRPC on ``host:port``."""
    return [
        str(dagster),
        "code-server",
        "start",
        "-h",
        host,
        "-p",
        str(port),
        *code_location_args(),
    ]


def code_server_answers(port: int, env: dict | None = None) -> bool:
    """Whether the code server on loopback ``port`` answers a gRPC health check."""
    check = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)]
    return subprocess.run(check, capture_output=True, env=env).returncode == 0


def write_grpc_workspace(path: Path, port: int) -> Path:
    """A workspace file at ``path`` that loads the code location from the code server on
    loopback ``port`` (what the webserver and the daemon read)."""
    grpc = {"host": "127.0.0.1", "port": port, "location_name": CODE_LOCATION_NAME}
    path.write_text(json.dumps({"load_from": [{"grpc_server": grpc}]}))
    return path
