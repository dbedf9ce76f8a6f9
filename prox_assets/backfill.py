"""Launching partition backfills through the Dagster webserver's GraphQL API.

This is the mutation the web UI itself sends (``launchPartitionBackfill``): the backfill is
recorded in the instance and the daemon launches its runs. (``dagster asset materialize`` runs
in-process instead and never reaches the daemon.) ``prox backfill``'s refinement backfill is
planned (``plan_refinement_backfill``) and launched (``launch_refinement_backfill``) here.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

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

BACKFILL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class BackfillError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict, timeout: float = 60.0) -> dict:
    """The ``data`` of a GraphQL answer from the webserver at ``url``; BackfillError for an error,
    no server (saying which command starts one), or an answer that is not Dagster's."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql",
        method="POST",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:  # GraphQL errors come back as a 4xx/5xx with a JSON body
        raw = exc.read()
        if not isinstance(_json_object(raw), dict):
            raise BackfillError(f"{url}: HTTP {exc.code}: {_excerpt(raw)}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackfillError(
            f"no Dagster webserver answers there ({reason}); start it and its daemon with "
            "`prox ui` (or pass --url), then run this again"
        ) from exc
    body = _json_object(raw)
    if not isinstance(body, dict):  # a proxy's HTML page, another service
        raise BackfillError(f"{url} did not answer as a Dagster webserver: {_excerpt(raw)}")
    if body.get("errors"):
        errors = body["errors"]
        first = errors[0] if isinstance(errors, list) and errors else errors
        raise BackfillError(str(first.get("message", first) if isinstance(first, dict) else first))
    data = body.get("data")
    if not isinstance(data, dict):
        raise BackfillError(f"{url} answered without data: {_excerpt(raw)}")
    return data


def _json_object(raw: bytes) -> object:
    """``raw`` parsed as JSON, or None if it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:  # also not UTF-8
        return None


def _excerpt(raw: bytes, limit: int = 200) -> str:
    """The start of an answer on one line, printable (it may be an HTML page)."""
    return repr(" ".join(raw[:limit].decode("utf-8", "replace").split()))


def _field(result: object, name: str, what: str) -> dict:
    """``result[name]``, a GraphQL object with a ``__typename``, or a BackfillError."""
    value = result.get(name) if isinstance(result, dict) else None
    if not isinstance(value, dict) or "__typename" not in value:
        raise BackfillError(f"{what}: the webserver's answer has no {name}: {str(result)[:200]!r}")
    return value


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
    result = _field(graphql(url, LAUNCH, {"params": params}), "launchPartitionBackfill", "launch")
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
    backfill_id = result.get("backfillId")
    # the id goes into URLs and onto the terminal: Dagster's are short words of letters
    if not isinstance(backfill_id, str) or not BACKFILL_ID.fullmatch(backfill_id):
        raise BackfillError(f"the answer to the launch has no backfill id: {str(result)[:200]!r}")
    return backfill_id


def backfill_status(url: str, backfill_id: str) -> dict:
    data = graphql(url, STATUS, {"id": backfill_id})
    result = _field(data, "partitionBackfillOrError", f"backfill {backfill_id}")
    if result["__typename"] != "PartitionBackfill":
        raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
    if not isinstance(result.get("status"), str):
        raise BackfillError(f"backfill {backfill_id}: the webserver's answer has no status")
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


@dataclass(frozen=True)
class RefinementBackfill:
    """A refiner version's backfill: refined_corpus for each shard (``partitions``, keys
    ``<version>|<shard>``) in ``runs`` runs of up to ``per_run`` partitions (refined_corpus's
    backfill policy: the daemon cuts the backfill so; None: all in one), then
    refined_pool[<version>]."""

    refiner_version: str
    partitions: list[str]
    per_run: int | None
    runs: int

    def launched(self, backfill_id: str, url: str) -> str:
        """One line on the launched backfill and where the UI shows it."""
        return (
            f"backfill {backfill_id}: {len(self.partitions)} partitions of refined_corpus in "
            f"{self.runs} run(s) (up to {self.per_run or len(self.partitions)} partitions a run, "
            f"the refiners loaded once a run), then refined_pool[{self.refiner_version}] -> "
            f"{url}/overview/backfills/{backfill_id}"
        )


def plan_refinement_backfill(
    instance, refiner_version: str, shards: list[str] | tuple[str, ...] = ()
) -> RefinementBackfill:
    """Every shard (or ``shards``) refined with ``refiner_version``, a registered
    refiner_version key (``UserError`` otherwise), cut into runs as the daemon will cut it."""
    from prox_assets.core.errors import UserError
    from prox_assets.partition_runs import partition_ranges
    from prox_assets.partitions import refiner_version_partitions, shard_partitions
    from prox_assets.refinement import refined_corpus

    if not instance.has_dynamic_partition(refiner_version_partitions.name, refiner_version):
        known = instance.get_dynamic_partitions(refiner_version_partitions.name)
        raise UserError(f"unknown refiner version {refiner_version!r}; known: {known}")
    targets = list(shards) or instance.get_dynamic_partitions(shard_partitions.name)
    names = [f"{refiner_version}|{s}" for s in targets]
    # each run a range of up to max_partitions_per_run shards, loading the two refiners once
    per_run = refined_corpus.backfill_policy.max_partitions_per_run
    runs = len(partition_ranges(refined_corpus.partitions_def, names, per_run, instance))
    return RefinementBackfill(refiner_version, names, per_run, runs)


def launch_refinement_backfill(url: str, plan: RefinementBackfill) -> str:
    """``plan``'s backfill through the webserver at ``url``: its id. refined_pool[<version>] is
    in the same backfill, once every shard is refined: what selection and training read, and
    what marks them stale (``prox_assets.lineage``)."""
    return launch_backfill(
        url,
        ["refined_corpus"],
        plan.partitions,
        title=f"refine with {plan.refiner_version}",
        tags={"prox/launched_by": "prox backfill"},
        downstream=[["refined_pool"]],
    )
