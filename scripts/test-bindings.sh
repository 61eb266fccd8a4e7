#!/usr/bin/env bash
# Generates the foreign-language bindings from the compiled library (uniffi library mode) and runs
# each language's tests against it. Today: Python. (Swift and Kotlin: see bindings/README.md.)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --lib --features ffi
cargo build --quiet -p uniffi-bindgen
library=target/debug/libchatvault.so

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./target/debug/uniffi-bindgen generate --no-format --library "$library" --language python \
  --out-dir "$out/python" >/dev/null
cp "$library" "$out/python/"
python_bin=$(bash scripts/python-env.sh | tail -n 1)
CHATVAULT_PY_DIR="$out/python" "$python_bin" bindings/python/test_chatvault.py
