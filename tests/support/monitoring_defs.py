"""A code location for tests/deploy/test_hostile_instance.py: one asset that sleeps until killed."""

import time

import dagster as dg


@dg.asset
def sleepy() -> None:
    time.sleep(600)


defs = dg.Definitions(
    assets=[sleepy],
    jobs=[dg.define_asset_job("sleepy_job", selection=[sleepy])],
    executor=dg.in_process_executor,  # the run worker is the only process to kill
)
