#!/usr/bin/env bash
# Creates (once) the Python virtualenv used by tests/independent/check_vectors.py and prints the
# venv's python path as the last line of stdout:
#
#     PY=$(bash scripts/python-env.sh | tail -n 1)
#
# The venv lives outside the repository, at
#     ${XDG_CACHE_HOME:-$HOME/.cache}/chatvault/venv-<key>
# where <key> is a short SHA-256 of the pinned requirements, the interpreter's version and its real
# path, so changing a pin or the interpreter makes a new venv and never mutates an old one.
# Idempotent and safe to run concurrently (flock). Progress and errors go to stderr only.
#
# Environment: PYTHON (default python3) picks the base interpreter.
# Works on a fresh Debian 12 (CPython 3.11): if `python3 -m venv` cannot bootstrap pip (Debian
# ships ensurepip in the separate python3-venv package), python3-venv is installed with apt-get.
# The script may also be sourced: it then exports CHATVAULT_PY (and still prints the path), without
# changing the caller's shell options.
__chatvault_python_env() (
set -euo pipefail

# Pinned, including transitive dependencies, so that the environment is reproducible.
REQUIREMENTS='argon2-cffi==25.1.0
argon2-cffi-bindings==26.2.0
cffi==2.1.1
pycparser==3.12
pynacl==1.6.2
zstandard==0.25.0'

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "python-env.sh: $PYTHON not found" >&2
  exit 1
fi
py_id=$("$PYTHON" -c 'import os, sys; print(sys.version.replace("\n", " ")); print(os.path.realpath(sys.executable))')
key=$(printf '%s\n%s\n' "$REQUIREMENTS" "$py_id" | sha256sum | cut -c1-12)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
venv="$cache/venv-$key"
marker="$venv/.chatvault-complete"

ready() {
  [ -f "$marker" ] && [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c 'import nacl.bindings, argon2.low_level, zstandard' >/dev/null 2>&1
}

install_venv_module() {
  # Debian/Ubuntu system Python ships ensurepip in python3-venv: install it only when needed.
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "python-env.sh: $PYTHON cannot create a venv with pip and apt-get is unavailable" >&2
    exit 1
  fi
  echo "python-env.sh: ensurepip missing, installing python3-venv with apt-get" >&2
  local sudo_cmd="" log
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi
  log=$(mktemp)
  # --no-upgrade: add the missing package only, never upgrade what is already installed.
  if ! { $sudo_cmd apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-upgrade python3-venv; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

build() {
  rm -rf "$venv"
  if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || ! "$PYTHON" -m venv "$venv" >&2; then
    rm -rf "$venv"
    install_venv_module
    "$PYTHON" -m venv "$venv" >&2
  fi
  local req
  req=$(mktemp)
  printf '%s\n' "$REQUIREMENTS" >"$req"
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --no-input \
      --no-deps --only-binary=:all: -r "$req" >&2; then
    # No wheel for this platform: allow building from source.
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --no-input \
      --no-deps -r "$req" >&2
  fi
  rm -f "$req"
  "$venv/bin/python" -c 'import nacl.bindings, argon2.low_level, zstandard' >&2
  printf '%s\n' "$REQUIREMENTS" >"$marker"
}

if ! ready; then
  mkdir -p "$cache"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/venv-$key.lock"
    flock 9
  fi
  # Another process may have finished the venv while this one waited for the lock.
  ready || build
fi
echo "$venv/bin/python"
)

if [ "${BASH_SOURCE[0]:-$0}" != "$0" ]; then
  # Sourced: run as a separate process so `set -e` and friends apply and do not leak.
  unset -f __chatvault_python_env
  if CHATVAULT_PY=$(bash "${BASH_SOURCE[0]}" | tail -n 1) && [ -n "$CHATVAULT_PY" ]; then
    export CHATVAULT_PY
    echo "$CHATVAULT_PY"
  else
    unset CHATVAULT_PY
    return 1
  fi
else
  __chatvault_python_env
fi
