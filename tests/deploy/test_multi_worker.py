"""Several machines, one backfill: step workers that share nothing but the servers.

Processes on loopback, each a "machine" with its own working directory, ``PROX_HOME`` and
``DAGSTER_HOME`` (no local disk in common):

* the orchestrator: the gRPC code server, the webserver and the daemon (the run workers they start
  only submit steps: ``PROX_EXECUTOR=celery``, dagster-celery);
* two Celery step workers (``dagster-celery worker start``), one step at a time each;
* the trainer: this test process, which registers the shards and trains the tiny refiners.

Shared: PostgreSQL (Dagster's run and event storage, and the DuckLake catalog's metadata), SeaweedFS
(the object store and the catalog's Parquet files) and RabbitMQ (the Celery broker). The test ingests
sample shards and backfills ``refined_corpus`` for two refiner versions across the workers, kills a
worker with ``kill -9`` half-way through a refine step, and checks that the broker hands the step to
the other worker, which resumes from the part file the dead one wrote, and that nothing is lost or
written twice. Which worker ran which step is read from the event log (dagster-celery's "Executing
steps ... in celery worker" engine event, with the worker's name) and asserted.
"""

import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prox_assets.backfill import launch_backfill, wait_for_backfill
from prox_assets.servers import (
    BIN,
    Server,
    code_server_answers,
    code_server_command,
    free_port,
    wait_http,
    wait_until,
    write_grpc_workspace,
)
from prox_resources.settings import REPO_ROOT
from tests.support.pipeline import REFINER, materialize, noisy_docs, train_refiners
from tests.support.servers import fresh_lake

pytestmark = pytest.mark.slow

WORKERS = ("worker-a", "worker-b")
EXECUTING = re.compile(r"Executing steps (\S+) in celery worker")
BATCH = re.compile(r"^batch 1/(\d+): \d+ documents")


@pytest.fixture
def rabbitmq(tmp_path):
    """Debian's RabbitMQ on loopback, a node of its own (data, password, Erlang port mapper);
    yields the broker URL."""
    exe = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not exe.exists():
        pytest.fail(
            "RabbitMQ is missing: run deploy/setup.sh --dev (Debian package rabbitmq-server)"
        )
    root = tmp_path / "rabbitmq"
    root.mkdir()
    taken: set[int] = set()
    port, dist, epmd = free_port(taken), free_port(taken), free_port(taken)
    password = secrets.token_hex(12)
    (root / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        f"default_user = prox\ndefault_pass = {password}\n"
    )
    (root / "enabled_plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(root),
        "RABBITMQ_NODENAME": f"prox{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_LOGS": "-",
        "ERL_EPMD_PORT": str(epmd),
    }
    server = Server("rabbitmq", [exe], root, env, root)
    try:
        wait_until(
            lambda: "Server startup complete" in server.tail(20000),
            "RabbitMQ started",
            90,
            [server],
            0.3,
        )
        yield {"url": f"amqp://prox:{password}@127.0.0.1:{port}//", "server": server}
    finally:
        server.stop()
        subprocess.run(
            ["epmd", "-kill"], env={**os.environ, "ERL_EPMD_PORT": str(epmd)}, capture_output=True
        )


def _instance_yaml() -> str:
    """deploy/dagster.yaml (PostgreSQL storage from DAGSTER_PG_*) for a deployment of two GPU
    workers (the `gpu` pool admits two steps, and two more runs may wait for them), with the
    instance's local folders taken from each process's own environment: a run's instance reference
    travels to the worker that runs its step, and must not name the orchestrator's disk."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["concurrency"]["pools"]["default_limit"] = 2
    # the runs of the next steps start while the slots are taken, ready when one frees up
    config["concurrency"]["pools"]["op_granularity_run_buffer"] = 2
    config["local_artifact_storage"] = {
        "module": "dagster._core.storage.root",
        "class": "LocalArtifactStorage",
        "config": {"base_dir": {"env": "PROX_DAGSTER_STORAGE"}},
    }
    config["compute_logs"] = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": {"env": "PROX_DAGSTER_COMPUTE_LOGS"}},
    }
    return yaml.safe_dump(config)


def _machine(root: Path, name: str, shared: dict, instance_yaml: str) -> dict:
    """The environment of one machine: the shared server settings plus folders of its own."""
    folder = root / name
    home, dagster_home = folder / "prox", folder / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(instance_yaml)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_", "PG"))
    }
    return {
        **env,
        **shared,
        "PROX_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PROX_DAGSTER_STORAGE": str(folder / "dagster-storage"),
        "PROX_DAGSTER_COMPUTE_LOGS": str(folder / "dagster-storage" / "logs"),
        "PWD": str(folder),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    }  # dagster-celery starts `celery`


def _steps(instance, run_id: str) -> dict:
    """A run's step executions from its event log: [(step_key, Celery worker)] in order (the
    engine event each worker writes when it takes a step), the log messages, the step successes."""
    from dagster import DagsterEventType

    out = {"workers": [], "messages": [], "success": []}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            out["messages"].append(entry.user_message)
            continue
        if event.event_type == DagsterEventType.ENGINE_EVENT and EXECUTING.search(
            event.message or ""
        ):
            out["workers"].append(
                (event.step_key, event.engine_event_data.metadata["Celery worker"].value)
            )
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            out["success"].append(entry.timestamp)
    return out


def _backfill_runs(instance, backfill_id: str) -> list:
    from dagster import RunsFilter

    return instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))


def _materializations(instance, asset: str, key: str) -> list:
    import dagster as dg

    return instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey(asset), asset_partitions=[key]), limit=10
    ).records


def test_a_backfill_across_two_workers_that_share_only_the_servers(
    postgres,
    seaweedfs,
    rabbitmq,
    sample_files,
    tiny_llama_dir,
    tmp_path,
    monkeypatch,
):
    import dagster as dg

    from prox_assets.cli import ingest_paths
    from prox_assets.definitions import celery_executor_config
    from prox_assets.ingest import raw_key
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore

    started = time.monotonic()
    # --- the servers, shared by every machine -----------------------------------------------------
    fresh = fresh_lake(postgres, seaweedfs)
    shared = {
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_USER": postgres["user"],
        "DAGSTER_PG_PASSWORD": postgres["password"],
        "DAGSTER_PG_DB": postgres["db"],
        **fresh["env"],
        "PROX_EXECUTOR": "celery",
        "PROX_CELERY_BROKER": rabbitmq["url"],
        # one run, so one step, per partition (raw_corpus's and refined_corpus's backfill policy
        # follow it; default 32 a run): steps to distribute over the workers
        "PROX_PARTITIONS_PER_RUN": "1",
    }
    instance_yaml = _instance_yaml()
    machines = {
        name: _machine(tmp_path, name, shared, instance_yaml)
        for name in ("orchestrator", *WORKERS, "trainer")
    }
    for k, v in machines["trainer"].items():  # this process is the trainer
        if k.startswith(("PROX_", "DAGSTER_", "AWS_", "PG")):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("PROX_EXECUTOR")  # in-process runs here
    monkeypatch.setenv("PROX_MODEL", str(tiny_llama_dir))
    # the workers' settings (deploy/celery.yaml) are those the runs submit steps with
    for var in ("PROX_CELERY_BACKEND", "PROX_CELERY_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    worker_config = REPO_ROOT / "deploy" / "celery.yaml"
    assert (
        yaml.safe_load(worker_config.read_text())["execution"]["config"] == celery_executor_config()
    )

    logs = tmp_path / "logs"
    logs.mkdir()
    orchestrator = machines["orchestrator"]
    taken: set[int] = set()
    grpc_port, web_port = free_port(taken), free_port(taken)
    workspace = write_grpc_workspace(tmp_path / "orchestrator" / "workspace.yaml", grpc_port)
    servers: dict[str, Server] = {}
    try:
        servers["code-server"] = Server(
            "code-server",
            code_server_command(grpc_port),
            logs,
            orchestrator,
            tmp_path / "orchestrator",
        )
        for (
            name
        ) in WORKERS:  # as deploy/celery.yaml says; `-n NAME`: the worker's hostname is NAME@<host>
            servers[name] = Server(
                name,
                [
                    BIN / "dagster-celery",
                    "worker",
                    "start",
                    "-A",
                    "dagster_celery.app",
                    "-y",
                    worker_config,
                    "-n",
                    name,
                    "-i",
                    "prox_assets.definitions",  # loaded once, before the pool forks
                    "--",
                    "--concurrency=1",
                    "--without-gossip",
                    "--without-mingle",
                ],
                logs,
                machines[name],
                tmp_path / name,
            )

        # the trainer registers the shards meanwhile: a real sample shard and two small ones of
        # two refine batches (16 documents, then 9 or 10) each, so that a refine step can die half done
        trainer = tmp_path / "trainer"
        files = [
            next(p for p in sample_files if p.name == "news-00.warc.gz"),
            trainer / "web-00.jsonl.gz",
            trainer / "clean-00.jsonl.gz",
        ]
        files[1].write_bytes(gzip.compress(noisy_docs(26, noisy=True)))
        files[2].write_bytes(gzip.compress(noisy_docs(25, noisy=False)))
        assert set(ingest_paths(files, run=False, echo=lambda *_: None).values()) == {"registered"}
        shards, refined_shards = ["clean-00", "news-00", "web-00"], ["clean-00", "web-00"]

        wait_until(
            lambda: code_server_answers(grpc_port, orchestrator),
            "the code server answering gRPC",
            240,
            list(servers.values()),
        )
        servers["webserver"] = Server(
            "webserver",
            [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", web_port, "-w", workspace],
            logs,
            orchestrator,
            tmp_path / "orchestrator",
        )
        url = f"http://127.0.0.1:{web_port}"
        wait_http(f"{url}/server_info", servers["webserver"])
        for name in WORKERS:
            wait_until(
                lambda name=name: " ready." in servers[name].tail(20000),
                f"{name} ready",
                120,
                list(servers.values()),
                poll=0.5,
            )
        print(f"servers up in {time.monotonic() - started:.0f}s")

        instance = dg.DagsterInstance.get()  # the shared one: PostgreSQL
        names = {f"{w}@{socket.gethostname()}" for w in WORKERS}  # the workers' Celery hostnames
        workers_of: dict[
            str, list[str]
        ] = {}  # run id -> the workers that executed its step, in order

        def wait_runs(backfill_id: str, n: int, on_poll=None) -> list:
            """The backfill's ``n`` runs, once all have ended (the daemon notices a backfill is
            complete only every 30 s: its status is checked at the end)."""
            deadline = time.monotonic() + 420
            while True:
                runs = _backfill_runs(instance, backfill_id)
                if len(runs) == n and all(r.is_finished for r in runs):
                    return runs
                if on_poll:
                    on_poll(runs)
                assert time.monotonic() < deadline, [(r.run_id, r.status) for r in runs]
                for server in servers.values():
                    if server.name != killed.get("name"):
                        server.check_alive()
                time.sleep(0.3)

        def record(runs: list, asset: str) -> dict[str, str]:
            """partition -> the worker that completed its step; one run, one step per partition."""
            done = {}
            for run in runs:
                assert run.is_success, (run.run_id, run.status)
                steps = _steps(instance, run.run_id)
                assert {step for step, _ in steps["workers"]} == {asset} and len(
                    steps["success"]
                ) == 1, steps
                workers_of[run.run_id] = [w for _, w in steps["workers"]]
                assert set(workers_of[run.run_id]) <= names, workers_of[run.run_id]
                key = (
                    run.tags.get("dagster/partition")
                    or run.tags["dagster/asset_partition_range_start"]
                )
                assert key == run.tags.get("dagster/asset_partition_range_end", key)
                done[key] = workers_of[run.run_id][-1]
            return done

        # --- 1. ingestion: a backfill, one step per shard (PROX_PARTITIONS_PER_RUN=1), across the workers
        t = time.monotonic()
        ingest_backfill = launch_backfill(url, ["raw_corpus"], shards, "multi-worker ingestion")
        # the daemon starts now, so that its first pass (then one every 30 s) finds the backfill
        servers["daemon"] = Server(
            "daemon",
            [BIN / "dagster-daemon", "run", "-w", workspace],
            logs,
            orchestrator,
            tmp_path / "orchestrator",
        )
        killed: dict = {}
        ingested = record(wait_runs(ingest_backfill, len(shards)), "raw_corpus")
        print(f"ingestion: {ingested} in {time.monotonic() - t:.0f}s")
        assert sorted(ingested) == shards and set(ingested.values()) == names, ingested

        # --- 2. two refiner versions (tiny models), trained by the trainer in this process -----------
        t = time.monotonic()
        model = str(tiny_llama_dir)
        v1 = train_refiners(instance, model)
        v2 = (
            materialize(instance, "refiner", "chunk", {**REFINER, "base_model": model, "lr": 1e-4})
            .asset_materializations_for_node("refiner")[0]
            .metadata["refiner_pair"]
            .value
        )
        assert v1 != v2
        print(f"refiners trained in {time.monotonic() - t:.0f}s")

        # --- 3. one refined_corpus backfill of both versions; a worker half-way through its second
        # step is killed (-9, parent and child): its step goes back to the queue and the other
        # worker runs it, skipping the batches the dead one wrote
        keys = [f"{v}|{s}" for v in (v1, v2) for s in refined_shards]

        def kill_midway(runs: list) -> None:
            if killed:
                return
            done_by: Counter = Counter()
            midway = []
            for run in runs:
                steps = _steps(instance, run.run_id)
                if steps["success"]:
                    done_by[steps["workers"][-1][1]] += 1
                    continue
                batches = [
                    int(m.group(1)) for m in map(BATCH.match, filter(None, steps["messages"])) if m
                ]
                if steps["workers"] and batches and batches[0] >= 2:
                    midway.append((run, steps["workers"][-1][1], batches[0]))
            for run, worker, n_batches in midway:
                if done_by[worker]:  # a worker that has finished a step already
                    name = worker.split("@")[0]
                    servers[name].stop(sig=signal.SIGKILL)
                    killed.update(
                        run_id=run.run_id,
                        worker=worker,
                        name=name,
                        at=time.monotonic(),
                        batches=n_batches,
                        partition=run.tags["dagster/asset_partition_range_start"],
                    )
                    return

        t = time.monotonic()
        refine_backfill = launch_backfill(url, ["refined_corpus"], keys, "multi-worker refinement")
        refined = record(
            wait_runs(refine_backfill, len(keys), on_poll=kill_midway), "refined_corpus"
        )
        assert killed, f"no worker was caught half-way through its second step: {refined}"
        print(
            f"refined: {refined} in {time.monotonic() - t:.0f}s; killed {killed['worker']} in "
            f"{killed['partition']}, which was done {time.monotonic() - killed['at']:.0f}s later"
        )
        (survivor,) = names - {killed["worker"]}
        assert workers_of[killed["run_id"]] == [
            killed["worker"],
            survivor,
        ]  # started there, finished here
        assert sorted(refined) == sorted(keys)
        assert set(refined.values()) == names, refined  # both workers finished refine steps
        resumed = [
            m
            for m in _steps(instance, killed["run_id"])["messages"]
            if m and "earlier attempt" in m
        ]
        assert resumed and resumed[0].startswith("batch 1/"), (
            resumed
        )  # the dead worker's part, kept

        # --- every partition materialized once, by the run the backfill made for it ----------------
        expected = [("raw_corpus", s) for s in shards] + [("refined_corpus", k) for k in keys]
        for asset, key in expected:
            records = _materializations(instance, asset, key)
            assert len(records) == 1 and records[0].run_id in workers_of, (asset, key, records)
        assert sorted(len(w) for w in workers_of.values()) == [1] * (len(expected) - 1) + [2]

        # --- prox audit (started now, read below): a document whose shard both workers wrote
        # (typically: the dead worker refined it with one version, the survivor with the other)
        catalog, store = Catalog(), ObjectStore()
        writers = {
            s: [ingested[s]] + [refined[f"{v}|{s}"] for v in (v1, v2)] for s in refined_shards
        }
        mixed = [s for s in refined_shards if set(writers[s]) == names]
        assert mixed, writers
        doc_id = catalog.query("SELECT min(doc_id) FROM documents WHERE shard = ?", [mixed[0]]).row(
            0
        )[0]
        audit_proc = subprocess.Popen(
            [BIN / "prox", "audit", doc_id, "--json"],
            env=machines["trainer"],
            cwd=trainer,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        # --- the catalog reconciles with the files ------------------------------------------------
        for shard in shards:
            raw = store.read_parquet(raw_key(catalog, shard))
            n_docs, n_ids, runs = catalog.query(
                "SELECT count(*), count(DISTINCT doc_id), count(DISTINCT run_id) FROM documents WHERE shard = ?",
                [shard],
            ).row(0)
            (n_ingested,) = catalog.query(
                "SELECT n_ingested FROM ingestions WHERE shard = ?", [shard]
            ).row(0)
            assert n_docs == n_ids == n_ingested == raw.height > 0 and runs == 1, shard
        for key in keys:
            version, shard = key.split("|")
            frame = store.read_parquet(f"refined/{version}/{shard}.parquet")
            n_rows, n_ids, run_ids = catalog.query(
                "SELECT count(*), count(DISTINCT doc_id), count(DISTINCT run_id) FROM program_runs "
                "WHERE refiner_version = ? AND shard = ?",
                [version, shard],
            ).row(0)
            (n_raw,) = catalog.query("SELECT count(*) FROM documents WHERE shard = ?", [shard]).row(
                0
            )
            assert n_rows == n_ids == frame.height == n_raw > 16 and run_ids == 1, key
            assert set(frame["doc_id"]) == set(
                catalog.query("SELECT doc_id FROM documents WHERE shard = ?", [shard])["doc_id"]
            )
            parts = f"refined/{version}/.parts/{shard}"
            assert [k for k in store.list(parts) if k.startswith(parts + "/")] == [], (
                key
            )  # parts cleaned up
        (n_program_runs,) = catalog.query("SELECT count(*) FROM program_runs").row(0)
        assert n_program_runs == sum(
            catalog.query("SELECT count(*) FROM documents WHERE shard = ?", [k.split("|")[1]]).row(
                0
            )[0]
            for k in keys
        )

        # --- prox audit: the document's rows were written by both workers ---------------------------
        stdout, stderr = audit_proc.communicate(timeout=180)
        assert audit_proc.returncode == 0, stderr[-3000:]
        audit = json.loads(stdout)
        assert len(audit["ingested"]) == 1 and len(audit["refinements"]) == 2, audit
        rows = [("ingested", r["run_id"]) for r in audit["ingested"]] + [
            (r["refiner_version"], r["run_id"]) for r in audit["refinements"]
        ]
        by_row = {
            what: workers_of[run_id][-1] for what, run_id in rows
        }  # the worker that wrote each row
        assert by_row == {
            "ingested": writers[mixed[0]][0],
            v1: writers[mixed[0]][1],
            v2: writers[mixed[0]][2],
        }
        assert set(by_row.values()) == names, by_row
        print(f"prox audit {doc_id} (shard {mixed[0]}): rows written by {by_row}")

        # --- no local disk in common: no catalog file anywhere, each worker fetched its own models --
        for name, env in machines.items():
            home = Path(env["PROX_HOME"])
            assert not list(home.rglob("*.duckdb")) and not (home / "store").exists(), name
        for name in WORKERS:
            assert list((Path(machines[name]["PROX_HOME"]) / "models").rglob("config.json")), name

        # --- and the daemon saw both backfills through ------------------------------------------------
        for backfill_id in (ingest_backfill, refine_backfill):
            status = wait_for_backfill(url, backfill_id, timeout_s=120, poll_s=1)
            assert status["status"] == "COMPLETED_SUCCESS", status
        for name in ("code-server", "webserver", "daemon", survivor.split("@")[0]):
            servers[name].check_alive()
        print(
            f"multi-worker test: {time.monotonic() - started:.0f}s; steps completed by worker: "
            f"{dict(Counter(w[-1] for w in workers_of.values()))}; ingestion {ingested}; refinement {refined}"
        )
    finally:
        for s in reversed(list(servers.values())):
            s.stop()
        for s in [*servers.values(), rabbitmq["server"]]:  # shown by pytest when the test failed
            print(f"--- {s.name}\n{s.tail(3000)}")
