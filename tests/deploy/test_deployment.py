"""A production-shaped deployment on loopback: PostgreSQL (Debian's server) as Dagster's storage,
the code location in a gRPC code server, webserver and daemon as separate processes, data on S3
in SeaweedFS, and a partition backfill that the daemon runs to success. The instance file is the
committed ``deploy/dagster.yaml``."""

import os
import secrets
import shutil
import subprocess
import urllib.request

import pytest

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

pytestmark = pytest.mark.slow


def test_backfill_through_the_daemon_on_postgres_and_s3(
    postgres, seaweedfs, sample_files, tmp_path
):
    import psycopg2
    import s3fs

    bucket = f"deploy-{secrets.token_hex(4)}"
    s3 = s3fs.S3FileSystem(
        endpoint_url=seaweedfs["endpoint"], key=seaweedfs["key"], secret=seaweedfs["secret"]
    )
    s3.mkdir(bucket)
    home = tmp_path / "prox"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "PROX_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PROX_STORE": f"s3://{bucket}/prox",
        "AWS_ENDPOINT_URL": seaweedfs["endpoint"],
        "AWS_ACCESS_KEY_ID": seaweedfs["key"],
        "AWS_SECRET_ACCESS_KEY": seaweedfs["secret"],
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_USER": postgres["user"],
        "DAGSTER_PG_PASSWORD": postgres["password"],
        "DAGSTER_PG_DB": postgres["db"],
    }
    env.pop("PROX_CATALOG", None)
    taken: set[int] = set()
    grpc_port, web_port = free_port(taken), free_port(taken)
    workspace = write_grpc_workspace(tmp_path / "workspace.yaml", grpc_port)
    logs = tmp_path / "logs"
    logs.mkdir()

    servers = []
    try:
        code = Server("code-server", code_server_command(grpc_port), logs, env, REPO_ROOT)
        servers.append(code)
        wait_until(
            lambda: code_server_answers(grpc_port, env),
            "the code server answering gRPC",
            180,
            servers,
        )
        web = Server(
            "webserver",
            [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", web_port, "-w", workspace],
            logs,
            env,
            tmp_path,
        )
        daemon = Server(
            "daemon", [BIN / "dagster-daemon", "run", "-w", workspace], logs, env, tmp_path
        )
        servers += [web, daemon]
        url = f"http://127.0.0.1:{web_port}"
        wait_http(f"{url}/server_info", web)

        # new files arrive: uploaded to S3 and registered as partitions in the PostgreSQL instance
        files = [p for p in sample_files if p.name.startswith(("news-", "math-"))]
        subprocess.run(
            [BIN / "prox", "ingest", "--no-run", *files], env=env, check=True, capture_output=True
        )
        shards = sorted(p.name.split(".")[0] for p in files)
        backfill_id = launch_backfill(url, ["raw_corpus"], shards, "deployment test")
        status = wait_for_backfill(url, backfill_id, timeout_s=600)
        assert status["status"] == "COMPLETED_SUCCESS", (status, daemon.tail(), code.tail())
        for s in servers:
            s.check_alive()

        for shard in shards:  # the data is on S3
            assert len(s3.ls(f"{bucket}/prox/raw/{shard}/")) == 1
        with psycopg2.connect(
            host=postgres["host"],
            port=postgres["port"],
            user=postgres["user"],
            password=postgres["password"],
            dbname=postgres["db"],
        ) as con:
            cur = con.cursor()
            # raw_corpus's backfill policy: one run for the shards (a partition key range), one
            # materialization per shard
            cur.execute(
                "SELECT status, count(*) FROM runs WHERE backfill_id = %s GROUP BY status",
                [backfill_id],
            )
            assert dict(cur.fetchall()) == {"SUCCESS": 1}
            cur.execute("SELECT run_id FROM runs WHERE backfill_id = %s", [backfill_id])
            (run_id,) = cur.fetchone()
            cur.execute(
                "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                "AND run_id = %s",
                [run_id],
            )
            assert sorted(row[0] for row in cur.fetchall()) == shards
        page = urllib.request.urlopen(url, timeout=10).read().decode()  # the UI itself is served
        assert "<html" in page.lower()
    finally:
        for s in reversed(servers):
            s.stop()
        for s in [*servers, postgres["server"]]:  # shown by pytest when the test failed
            print(f"--- {s.name}\n{s.tail(4000)}")
