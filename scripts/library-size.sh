#!/usr/bin/env bash
# Builds the mobile library as the apps ship it (release profile of Cargo.toml, `--features ffi`,
# host target) and prints the size of the stripped cdylib against the 6 MB goal of issue 9.
#
#   scripts/library-size.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --lib --features ffi --quiet
library=target/release/libchatvault.so
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$library"
bytes=$(stat -c %s "$stripped")
printf 'stripped %s: %s bytes (goal: at most 6,000,000)\n' "$library" "$bytes"
[ "$bytes" -le 6000000 ]
