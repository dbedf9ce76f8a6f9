"""The one Definitions object of the code location (loaded by workspace.yaml), built from the
settings of the environment (``ProxSettings``), as the ``prox`` command line builds its runs."""

from __future__ import annotations

import dagster as dg

from prox_assets.ingest import incoming_files_sensor, raw_corpus
from prox_assets.partitions import shard_partitions
from prox_assets.refinement import (
    refine_new_shards_sensor,
    refined_corpus,
    refined_pool,
    refined_pool_sensor,
)
from prox_assets.refiner_training import refiner
from prox_assets.scoring import seed_scores
from prox_assets.selection import landmark_influence, selected_subset
from prox_assets.synthesis import sft_programs
from prox_assets.targets import target_set
from prox_assets.training import evaluation_report, trained_checkpoint
from prox_resources.catalog import Catalog
from prox_resources.device import DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.settings import ProxSettings
from prox_resources.store import ObjectStore

# In data-flow order.
ASSETS = [
    raw_corpus,
    seed_scores,
    sft_programs,
    refiner,
    refined_corpus,
    refined_pool,
    target_set,
    landmark_influence,
    selected_subset,
    trained_checkpoint,
    evaluation_report,
]
SENSORS = [incoming_files_sensor, refine_new_shards_sensor, refined_pool_sensor]
JOBS = [
    dg.define_asset_job(
        "ingest_job",
        selection=[raw_corpus],
        partitions_def=shard_partitions,
        description="Ingest one shard: raw input file -> raw_corpus partition.",
    )
]


def build_resources(settings: ProxSettings | None = None) -> dict:
    """Resources for Dagster runs, from ``settings`` (default: the environment's). A variable
    the environment sets is passed as an ``EnvVar`` reference, resolved inside the run (the UI
    shows the name, never the value); unset fields fall back to the same settings when used, so
    code outside a run (CLI, tests) can build ``ObjectStore()`` / ``Catalog()`` as well."""
    settings = settings or ProxSettings.from_environment()

    def ref(name: str) -> dg.EnvVar | None:
        return dg.EnvVar(name) if name in settings.given else None

    return {
        "store": ObjectStore(
            url=ref("PROX_STORE"),
            endpoint_url=ref("AWS_ENDPOINT_URL"),
            access_key_id=ref("AWS_ACCESS_KEY_ID"),
            secret_access_key=ref("AWS_SECRET_ACCESS_KEY"),
        ),
        "catalog": Catalog(path=ref("PROX_CATALOG")),
        "device": DeviceSettings.from_settings(settings),
        # PROX_ENGINE_BACKEND, PROX_MODEL, PROX_BASE_MODEL: the same function as the CLI's engine
        "engine": ModelEngine.from_settings(settings),
    }


def celery_executor_config(settings: ProxSettings | None = None) -> dict:
    """The Celery executor's settings (PROX_EXECUTOR=celery): those the runs submit steps with, and
    those of the workers that run them (``deploy/celery.yaml``, which says how to start one; the
    multi-worker test checks that the two agree).

    PROX_CELERY_BROKER   the broker, e.g. RabbitMQ ``amqp://USER:PASSWORD@HOST:5672//``; read from
                         the environment where it is used, so no password is in a run's config
    PROX_CELERY_BACKEND  where step results go back to the run (default ``rpc://``: through the
                         broker, to the run that submitted the step)

    A worker takes one step at a time and acknowledges it when the step is done (``acks_late``,
    prefetch 1): a busy worker holds no second step that an idle one could run, and a step whose
    worker dies (``kill -9``, a lost machine) goes back to the queue and another worker runs it,
    resuming from what the dead one wrote (refined_corpus's part files). RabbitMQ requeues it as
    soon as the worker's connection drops; its ``consumer_timeout`` (30 min by default) must exceed
    the longest step. A Redis broker requeues it only after PROX_CELERY_VISIBILITY_TIMEOUT seconds
    (default 6 h), and hands out a second time any step still running then."""
    from dagster_celery.defaults import broker_transport_options

    settings = settings or ProxSettings.from_environment()
    return {
        "broker": {"env": "PROX_CELERY_BROKER"},
        "backend": {"env": "PROX_CELERY_BACKEND"} if settings.celery_backend else "rpc://",
        "config_source": {
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_transport_options": {
                **broker_transport_options,  # dagster-celery's own (retries)
                # Redis only: when a step of a lost worker goes back to the queue, checked every 10 s
                "visibility_timeout": settings.celery_visibility_timeout,
                "unacked_restore_interval": 10,
                "unacked_restore_throttle": 1,
            },
        },
    }


def build_executor(settings: ProxSettings | None = None):
    """PROX_EXECUTOR=k8s: every step in its own Kubernetes pod (dagster-k8s, the ``deploy``
    extra); GPU steps carry their GPU request in ``GPU_OP_TAGS``. PROX_EXECUTOR=celery: every
    step a task on a Celery broker, run by whichever worker takes it (dagster-celery, the
    ``deploy`` extra; ``celery_executor_config``). Default: Dagster's own."""
    settings = settings or ProxSettings.from_environment()
    executor = settings.executor
    if executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_executor_config(settings), name="celery")
    return None


def build_definitions(settings: ProxSettings) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        sensors=SENSORS,
        jobs=JOBS,
        resources=build_resources(settings),
        executor=build_executor(settings),
    )


defs = build_definitions(ProxSettings.from_environment())


def resolved_job(name: str) -> dg.JobDefinition:
    """A job by name, for ``dg.build_reconstructable_job`` (out-of-process execution)."""
    return defs.resolve_job_def(name)
