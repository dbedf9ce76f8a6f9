"""Where the tests find the project's commands."""

# the virtual environment's executables (prox, dagster, dagster-daemon, check-jsonschema, weed):
# next to the Python that runs the tests, as the platform finds them to start its servers
from prox_assets.servers import BIN

__all__ = ["BIN"]
