"""Run monitoring that notices a dead run worker, for runs launched every way this project launches them.

Dagster's run monitoring (the daemon's ``MONITORING`` loop) fails a ``STARTED`` run whose worker is
gone only if the run launcher implements ``check_run_worker_health``; Dagster's
``DefaultRunLauncher`` (1.13) does not, so a run whose worker died with ``kill -9`` stays
``STARTED`` forever unless the code server that spawned it is still alive to notice (its orphan
check). ``ProxRunLauncher`` is the default launcher plus that check:

* a run launched through a code server (the UI, sensors, backfills): the server is asked which
  runs it executes; if it answers without this run, the worker is gone. If the server itself is
  gone and it ran on this machine, the worker's pid from the run's ``Started process for run``
  event is checked.
* a run executed in-process by the ``prox`` command line (``dg.materialize``): the command tags
  the run with its host, pid and process start time (``worker_tags``); a pid that is gone, or now
  belongs to a younger process, means the worker died.

Anything that cannot be decided from here (a worker on another machine) counts as running. The
Kubernetes deployment uses ``K8sRunLauncher``, which has its own check.
"""

from __future__ import annotations

import json
import os
import socket

from dagster import DefaultRunLauncher
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

WORKER_TAG = "prox/worker"  # "<host> <pid> <start ticks>" of the process executing the run
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return -1  # exists, unreadable
    fields = stat.rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else -1  # field 22 of stat(5); fields[0] is field 3


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs, and (when given) is the process that started at ``start_ticks``."""
    if os.path.isdir("/proc/self"):
        ticks = _start_ticks(pid)
        if ticks is None:
            return False
        if _is_zombie(pid):
            return False
        return start_ticks is None or ticks in (-1, start_ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return False


def worker_tags() -> dict[str, str]:
    """Tags naming this process as the worker of a run it executes in-process."""
    return {WORKER_TAG: f"{socket.gethostname()} {os.getpid()} {_start_ticks(os.getpid())}"}


def tagged_worker_alive(run: DagsterRun) -> bool | None:
    """For a run tagged by ``worker_tags``: True/False; None if untagged or on another host."""
    value = run.tags.get(WORKER_TAG)
    if not value:
        return None
    try:
        host, pid, ticks = value.split(" ")
        pid_n, ticks_n = int(pid), (None if ticks in ("None", "-1") else int(ticks))
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return pid_alive(pid_n, ticks_n)


def _event_worker_pid(instance, run_id: str) -> int | None:
    """The pid in the run's ``Started process for run (pid: N)`` engine event (code-server runs)."""
    for record in reversed(list(instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT))):
        event = record.dagster_event
        if event and (event.message or "").startswith("Started process for run"):
            pid = event.engine_event_data.metadata.get("pid")
            if pid is not None:
                try:
                    return int(pid.value)
                except (TypeError, ValueError):
                    return None
    return None


def check_worker(instance, run: DagsterRun) -> CheckRunHealthResult:
    """The health of ``run``'s worker, as far as it can be known from this machine."""
    tagged = tagged_worker_alive(run)
    if tagged is not None:
        if tagged:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker {run.tags[WORKER_TAG]} is gone"
        )
    if GRPC_INFO_TAG not in run.tags:
        return CheckRunHealthResult(
            WorkerStatus.RUNNING, "no way to reach the worker: assumed running"
        )
    info = json.loads(run.tags[GRPC_INFO_TAG])
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    client = DagsterGrpcClient(
        port=info.get("port"),
        socket=info.get("socket"),
        host=info.get("host"),
        use_ssl=bool(info.get("use_ssl", False)),
    )
    try:
        current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
    except Exception:  # noqa: BLE001  the code server is gone (or unreachable)
        current = None
    if current is not None:
        if run.run_id in current:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"code server {info} no longer executes this run"
        )
    local = info.get("socket") or info.get("host") in LOCAL_HOSTS
    pid = _event_worker_pid(instance, run.run_id) if local else None
    if pid is None:
        return CheckRunHealthResult(
            WorkerStatus.RUNNING, f"code server {info} unreachable: assumed running"
        )
    if pid_alive(pid):
        return CheckRunHealthResult(WorkerStatus.RUNNING)
    return CheckRunHealthResult(
        WorkerStatus.FAILED, f"code server {info} is gone and so is run worker pid {pid}"
    )


def fail_dead_local_runs(instance) -> list[str]:
    """Mark FAILURE every STARTED run whose tagged worker on this machine is gone (``prox`` calls
    this on start, so a killed command's runs are resolved even without a daemon)."""
    from dagster._core.storage.dagster_run import RunsFilter

    failed = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        if tagged_worker_alive(run) is False:
            instance.report_run_failed(run, f"run worker {run.tags[WORKER_TAG]} is gone (killed?)")
            failed.append(run.run_id)
    return failed


class ProxRunLauncher(DefaultRunLauncher):
    """Dagster's default run launcher, plus a run worker health check for run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return check_worker(self._instance, run)
