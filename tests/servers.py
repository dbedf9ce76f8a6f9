"""Real servers on loopback for the deployment and web UI tests: start, wait, stop, keep logs."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


class Server:
    """A process in its own session (so that stopping it stops its children too), logging to a file."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_dir: Path,
        env: dict | None = None,
        cwd: Path | None = None,
    ):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop())
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


def wait_http(url: str, server: Server, timeout: float = 180) -> None:
    """Until ``url`` answers at all (any HTTP status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            server.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{server.name}: {url} did not answer in {timeout:.0f}s\n{server.tail()}"
                ) from exc
            time.sleep(1)


def wait_until(predicate, what: str, timeout: float, servers: list[Server], poll: float = 1.0):
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


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is missing: run deploy/setup.sh --dev (Debian package postgresql)"
        )
    return found[-1].parent


def as_postgres_user() -> list[str]:
    """initdb refuses to run as root: run the server as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []


def chown_postgres(path: Path) -> None:
    if os.getuid() == 0:
        shutil.chown(path, "postgres", "postgres")
        for p in path.rglob("*"):
            shutil.chown(p, "postgres", "postgres")


def fresh_lake(postgres: dict, seaweedfs: dict) -> dict:
    """A new PostgreSQL database and SeaweedFS bucket for one DuckLake catalog and store: their
    names, the s3fs filesystem, and the environment that points prox at them."""
    import secrets

    import psycopg2
    import s3fs

    db = f"lake_{secrets.token_hex(4)}"
    con = psycopg2.connect(
        host=postgres["host"],
        port=postgres["port"],
        user=postgres["user"],
        password=postgres["password"],
        dbname="postgres",
    )
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {db}")
    con.close()
    bucket = db.replace("_", "-")
    s3 = s3fs.S3FileSystem(
        endpoint_url=seaweedfs["endpoint"], key=seaweedfs["key"], secret=seaweedfs["secret"]
    )
    s3.mkdir(bucket)
    env = {
        "PROX_CATALOG": f"ducklake:postgres:host={postgres['host']} port={postgres['port']} "
        f"user={postgres['user']} dbname={db}",
        "PGPASSWORD": postgres["password"],  # libpq's own variable: no password in PROX_CATALOG
        "PROX_STORE": f"s3://{bucket}/prox",
        "AWS_ENDPOINT_URL": seaweedfs["endpoint"],
        "AWS_ACCESS_KEY_ID": seaweedfs["key"],
        "AWS_SECRET_ACCESS_KEY": seaweedfs["secret"],
    }
    return {"db": db, "bucket": bucket, "s3": s3, "env": env}
