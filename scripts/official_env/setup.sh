#!/usr/bin/env bash
# Build (or refresh) the side environment `.official-venv/` holding the official
# `scgpt` 0.2.4 package from PyPI, used only to generate the parity fixtures in
# tests/data/official/ (see scripts/make_parity_fixtures.py).
#
# The project itself never imports from this environment.
#
# Usage:  bash scripts/official_env/setup.sh
# Re-running is safe: the venv is reused and pip skips satisfied requirements.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ROOT}/.official-venv"
STUBS="${ROOT}/scripts/official_env/stubs"
PYTHON_BIN="${PYTHON:-python3}"

# Versions known to work together on CPU (Python 3.11).
TORCH_SPEC="torch==2.13.0"   # resolves to the local CPU build; other specs pull CUDA wheels
SCGPT_SPEC="scgpt==0.2.4"
DEPS=(
    "numpy==2.4.6"
    "pandas==2.3.3"
    "scipy==1.17.1"
    "anndata==0.12.19"
    "scanpy==1.11.5"
    "scikit-learn==1.9.1"
    "tqdm"
    "typing_extensions"
    "ipython==9.18.1"   # scgpt.utils imports IPython.get_ipython at module level
)

log() { printf '[official-env] %s\n' "$*"; }

# pip prints one warning per missing local mirror folder; hide just those lines.
quiet_pip() {
    "${VENV}/bin/python" -m pip --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating ${VENV}"
    "${PYTHON_BIN}" -m venv "${VENV}"
else
    log "reusing ${VENV}"
fi

# 1. torch first, so nothing later can pull a CUDA build.
log "installing ${TORCH_SPEC}"
quiet_pip install -q "${TORCH_SPEC}"

# 2. scgpt itself without its (very heavy, partly unresolvable) dependency list.
log "installing ${SCGPT_SPEC} (--no-deps)"
quiet_pip install -q --no-deps "${SCGPT_SPEC}"

# 3. The small set of real packages the import chain and embed_data need.
log "installing runtime deps: ${DEPS[*]}"
log "(pip may list scgpt's unmet requirements: scib, scvi-tools, torchtext, ...; expected)"
quiet_pip install -q "${DEPS[@]}"

# 4. Make our hand-written stand-ins (torchtext, datasets) importable.
SITE="$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="${SITE}/scvi_scgpt_official_stubs.pth"
printf '%s\n' "${STUBS}" > "${PTH}"
log "stand-ins on sys.path via ${PTH}"

# 5. Smoke test.
"${VENV}/bin/python" - <<'PY'
import warnings

warnings.filterwarnings("ignore")
import numpy
import torch
import torchtext
import scgpt
from scgpt.model import TransformerModel  # noqa: F401
from scgpt.tasks import embed_data  # noqa: F401

assert scgpt.__version__ == "0.2.4", scgpt.__version__
assert torchtext.__version__.endswith("+stub"), torchtext.__file__
print(
    f"[official-env] OK: scgpt {scgpt.__version__}, torch {torch.__version__}, "
    f"numpy {numpy.__version__}, torchtext stand-in at {torchtext.__file__}"
)
PY

log "done. Generate fixtures with:"
log "  .official-venv/bin/python scripts/make_parity_fixtures.py"
