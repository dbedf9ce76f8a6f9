"""Where the tests find the project's commands."""

import sys
from pathlib import Path

# the virtual environment's executables (prox, dagster, dagster-daemon, check-jsonschema, weed):
# next to the Python that runs the tests
BIN = Path(sys.executable).parent
