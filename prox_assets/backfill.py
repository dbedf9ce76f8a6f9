"""Launching partition backfills through the Dagster webserver's GraphQL API.

This is the mutation the web UI itself sends (``launchPartitionBackfill``): the backfill is
recorded in the instance and the daemon launches its runs. (``dagster asset materialize`` runs
in-process instead and never reaches the daemon.)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions }
    ... on Error { message }
  }
}"""

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class BackfillError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql",
        method="POST",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # GraphQL errors come back as a 4xx/5xx with a JSON body
        detail = exc.read().decode(errors="replace")
        try:
            body = json.loads(detail)
        except ValueError:
            raise BackfillError(f"{url}: HTTP {exc.code}: {detail[:500]}") from exc
    if body.get("errors"):
        raise BackfillError(body["errors"][0].get("message", str(body["errors"])))
    return body["data"]


def launch_backfill(
    url: str,
    asset_key: list[str],
    partition_names: list[str],
    title: str,
    tags: dict[str, str] | None = None,
    downstream: list[list[str]] | None = None,
) -> str:
    """A backfill of ``partition_names`` of ``asset_key``; ``downstream`` assets in the same
    backfill get the partitions their partition mappings give (Dagster runs them afterwards)."""
    params = {
        "assetSelection": [{"path": asset_key}] + [{"path": k} for k in downstream or []],
        "partitionNames": partition_names,
        "title": title,
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
    }
    result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
    return result["backfillId"]


def backfill_status(url: str, backfill_id: str) -> dict:
    result = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
    return result


def wait_for_backfill(
    url: str, backfill_id: str, timeout_s: float = 3600, poll_s: float = 2.0, on_status=None
) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = backfill_status(url, backfill_id)
        if on_status:
            on_status(status)
        if status["status"] in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise BackfillError(
                f"backfill {backfill_id} still {status['status']} after {timeout_s:.0f}s"
            )
        time.sleep(poll_s)
