"""Where the tests find the project's commands and the set-up's files."""

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

# the virtual environment's executables (prox, dagster, dagster-daemon, check-jsonschema, weed):
# next to the Python that runs the tests, as the platform finds them to start its servers
from prox_assets.servers import BIN

REPO_HOME = Path(__file__).resolve().parent.parent.parent / ".prox"


class SetupLocations(NamedTuple):
    samples: Path  # the sample corpus the tests share, built once per machine
    downloads: Path  # the source packages deploy/setup.sh unpacked


def setup_locations(environ: Mapping[str, str]) -> SetupLocations:
    """Where the set-up's files are: under the PROX_HOME the tests were started with (default:
    the repository's .prox), the downloads where PROX_DOWNLOADS says if it is set (a set-up may
    keep them elsewhere, e.g. in a CI cache), as the platform itself reads it."""
    home = Path(environ.get("PROX_HOME") or REPO_HOME)
    downloads = Path(environ.get("PROX_DOWNLOADS") or home / "downloads")
    return SetupLocations(home / "samples", downloads)


__all__ = ["BIN", "SetupLocations", "setup_locations"]
