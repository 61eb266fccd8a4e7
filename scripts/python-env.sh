#!/usr/bin/env bash
# Creates (once) a Python virtualenv for the independent format checker, cached outside the repo
# and keyed by the pinned requirements and the Python version. Prints the venv's python path last.
set -euo pipefail
REQUIREMENTS="pynacl==1.6.2 argon2-cffi==25.1.0 zstandard==0.25.0"
PYTHON=${PYTHON:-python3}
key=$(printf '%s %s' "$REQUIREMENTS" "$($PYTHON --version 2>&1)" | sha256sum | cut -c1-12)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault/venv-$key"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import nacl, argon2, zstandard' 2>/dev/null; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! $PYTHON -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 without ensurepip: install python3-venv and retry.
    apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
    $PYTHON -m venv "$venv"
  fi
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $REQUIREMENTS >&2
fi
echo "$venv/bin/python"
