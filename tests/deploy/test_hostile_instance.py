"""Crash leftovers (issue 15, item 7, run monitoring): a run whose worker is killed with -9 ends
FAILURE instead of STARTED forever, with the instance settings this repository ships
(``dagster.yaml``: run monitoring on, ``ProxRunLauncher``), a real ``dagster-daemon`` and real
processes killed with SIGKILL. A run whose worker is alive is left alone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from prox_assets.servers import Server
from prox_resources.run_launcher import WORKER_TAG
from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN

DEFS = REPO_ROOT / "tests" / "support" / "monitoring_defs.py"
# a run executed in-process by a command, the way `prox ingest` and `prox demo` run them
IN_PROCESS = (
    "import dagster as dg\n"
    "from prox_resources.run_launcher import worker_tags\n"
    "from tests.support.monitoring_defs import sleepy\n"
    "dg.materialize([sleepy], instance=dg.DagsterInstance.get(), tags={'prox/launched_by': 'cli', **worker_tags()})\n"
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_"))}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def _instance_dir(tmp_path: Path, poll_s: int) -> Path:
    """The repository's dagster.yaml, with a short monitoring poll for the test."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_launcher"]["class"] == "ProxRunLauncher"
    config["run_monitoring"]["poll_interval_seconds"] = poll_s
    config["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 1},
    }
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def _wait(what: str, check, timeout: float, server: Server | None = None, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if server is not None:
            server.check_alive()
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{server.tail()}" if server else ""))


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[-1].split()[1])


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if (event.message or "").startswith("Started process for run"):
            return int(event.engine_event_data.metadata["pid"].value)
    return None


def _messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(
        r.dagster_event.message or "" for r in instance.all_logs(run_id) if r.dagster_event
    )


@pytest.mark.slow
def test_the_daemon_fails_runs_whose_worker_was_killed(tmp_path):
    home = _instance_dir(tmp_path, poll_s=1)
    env = _env(DAGSTER_HOME=str(home))
    # the instance's SQLite storage first: a daemon starting meanwhile would create the same tables
    # at the same moment ("table alembic_version already exists", two runs of three on a busy
    # machine)
    instance = dg.DagsterInstance.from_config(str(home))
    daemon = Server(
        "daemon", [BIN / "dagster-daemon", "run", "-f", DEFS], tmp_path, env=env, cwd=REPO_ROOT
    )
    cli = None
    try:
        # 1. a run launched through the daemon and its code server (the UI's, a sensor's way)
        launched = subprocess.run(
            [BIN / "dagster", "job", "launch", "-f", DEFS, "-j", "sleepy_job"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert launched.returncode == 0, launched.stdout + launched.stderr
        run_id = instance.get_runs(limit=1)[0].run_id
        worker = _wait("the run worker", lambda: _worker_pid(instance, run_id), 180, daemon)
        _wait(
            "STARTED", lambda: _status(instance, run_id) == dg.DagsterRunStatus.STARTED, 60, daemon
        )
        time.sleep(5)  # several monitoring polls: a live worker is left alone
        assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED

        # 2. a run executed in-process by a command (prox ingest / prox demo)
        cli = subprocess.Popen(
            [sys.executable, "-c", IN_PROCESS],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cli_run = _wait(
            "the in-process run",
            lambda: next(
                (
                    r.run_id
                    for r in instance.get_runs()
                    if WORKER_TAG in r.tags and r.status == dg.DagsterRunStatus.STARTED
                ),
                None,
            ),
            120,
            daemon,
        )
        time.sleep(3)
        assert _status(instance, cli_run) == dg.DagsterRunStatus.STARTED

        # kill -9: the code server first (else it would notice its dead child itself), then the
        # worker; and the command running its run in-process
        code_server = _ppid(worker)
        assert b"dagster" in Path(f"/proc/{code_server}/cmdline").read_bytes()
        os.kill(code_server, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)

        for rid in (run_id, cli_run):
            _wait(
                f"run {rid} to fail",
                lambda rid=rid: _status(instance, rid) == dg.DagsterRunStatus.FAILURE,
                120,
                daemon,
            )
            assert "is gone" in _messages(instance, rid)
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        daemon.stop()


def test_a_killed_prox_command_s_runs_are_failed_by_the_next_command(tmp_path):
    """No daemon at all: the next `prox` command that opens the instance resolves them."""
    prox_home = tmp_path / "home"
    env = _env(PROX_HOME=str(prox_home))
    subprocess.run(
        [BIN / "prox", "catalog", "SELECT 1"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    dagster_home = str(prox_home / "dagster")  # where every prox command puts the instance
    cli = subprocess.Popen(
        [sys.executable, "-c", IN_PROCESS],
        env={**env, "DAGSTER_HOME": dagster_home},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        instance = dg.DagsterInstance.from_config(dagster_home)
        run_id = _wait(
            "the in-process run",
            lambda: next(
                (r.run_id for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED),
                None,
            ),
            120,
        )
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)
        time.sleep(1)
        assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED  # nobody noticed yet
    finally:
        if cli.poll() is None:
            cli.kill()
    data = tmp_path / "x.jsonl"
    data.write_text('{"text": "a document"}\n')
    proc = subprocess.run(
        [BIN / "prox", "ingest", "--no-run", data],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run {run_id}: its prox process is gone; marked failed" in proc.stderr
    assert _status(instance, run_id) == dg.DagsterRunStatus.FAILURE
