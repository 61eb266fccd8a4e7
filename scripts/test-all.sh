#!/usr/bin/env bash
# Runs every check and test of chatvault: formatting, lints, docs, unit and integration tests,
# and the test-vector checks. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo doc (broken links and missing docs are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet

step "the mobile library builds without the CLI feature"
cargo build --lib --quiet

step "test vectors, checked by an independent Python implementation of docs/FORMAT.md"
python_bin=$(bash scripts/python-env.sh | tail -n 1)
"$python_bin" tests/independent/check_vectors.py

step "real S3 servers on loopback: Garage 2.5.0 and moto (installed once, cached in ~/.cache/chatvault)"
servers_dir=$(mktemp -d)
trap 'bash scripts/s3-servers.sh stop "$servers_dir"; rm -rf "$servers_dir"' EXIT
bash scripts/s3-servers.sh start "$servers_dir"
# shellcheck disable=SC1091
source "$servers_dir/env"
export CHATVAULT_REQUIRE_S3=1

step "cargo test (all features; the store and sync suites also run against Garage and moto)"
cargo test --all-features
