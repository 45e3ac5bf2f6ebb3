#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: Debian packages (when root), the project-local virtual
# environment .venv with torch==2.13.0 (CPU wheel) installed first, the package in editable mode with its dev and
# docs extras, and AIIDA_PATH pointing at the project's embedded AiiDA profile. Safe to run again: every step is skipped
# when it is already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
DEBIAN_PACKAGES=(quantum-espresso quantum-espresso-data libopenblas0-serial)

log() { printf '[alkit] %s\n' "$*" >&2; }
# pip on this kind of machine warns about every unused local index folder: keep real messages only
pip_quiet() { "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }; }

missing_debs=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_debs+=("$pkg")
done
if [ "${#missing_debs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        log "installing Debian packages: ${missing_debs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
    else
        log "missing Debian packages: ${missing_debs[*]}"
        log "run: sudo apt-get install -y ${missing_debs[*]}"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi

# Re-install only when the dependency declaration or the way of installing (INSTALL_MODE: bytecode compiled at
# install) changed since the last successful install.
stamp="$VENV/.alkit-installed"
EXTRAS="dev,docs,mace"
INSTALL_MODE="compile-bytecode"
want="$(printf '%s %s %s' "$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)" "$EXTRAS" "$INSTALL_MODE")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        log "installing torch==$TORCH_VERSION (CPU wheel; install your CUDA build of torch first for GPUs)"
        pip_quiet "torch==$TORCH_VERSION"
    fi
    log "installing aiida-alkit (editable) with extras $EXTRAS"
    # uv resolves and installs the same versions as pip in a fifth of the time (~20 s instead of ~2 min on 2 cores);
    # it keeps the torch installed above. pip does the work when uv cannot be installed. --compile-bytecode: uv
    # writes no .pyc by default (pip does), and where PYTHONDONTWRITEBYTECODE is set every process would compile
    # the packages' sources again at import (import mace.modules: 14.0 CPU-s without .pyc, 8.9 with).
    if pip_quiet uv && "$VENV/bin/uv" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -e "$ROOT[$EXTRAS]"; then
        :
    else
        log "uv failed: installing with pip"
        pip_quiet -e "$ROOT[$EXTRAS]"
    fi
    echo "$want" > "$stamp"
fi

export AIIDA_PATH="${AIIDA_PATH:-$ROOT}"
export PATH="$VENV/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
