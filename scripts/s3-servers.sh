#!/usr/bin/env bash
# Installs (cached, idempotent) and runs the two real S3 servers the tests use, on loopback only:
#   Garage 2.5.0 - a real S3 store: checks SigV4 signatures, ignores conditional writes;
#   moto server  - an AWS emulator: implements conditional writes, enforces multipart part sizes.
#
#   scripts/s3-servers.sh install      install both (Garage: cargo install, ~8 min the first time)
#   scripts/s3-servers.sh start DIR    (re)start both with state in DIR on free loopback ports;
#                                      writes DIR/env (shell exports for the tests)
#   scripts/s3-servers.sh stop DIR     stop them
#
# DIR/env exports CHATVAULT_TEST_{GARAGE,MOTO}_{URL,ACCESS_KEY,SECRET_KEY,PID}; the URLs are
# s3:// store URLs (see StoreConfig::parse). Then: `source DIR/env; cargo test -- --include-ignored`
# (the S3 tests are #[ignore]d otherwise; CHATVAULT_REQUIRE_S3=1 fails a run that leaves them out).
#
# Caches live in ${XDG_CACHE_HOME:-~/.cache}/chatvault: garage-<version>/bin/garage and
# moto-venv-<version>/. moto comes from the system python3 if it already has exactly the pinned
# version with its server extras, else from that venv.
set -euo pipefail

GARAGE_VERSION=2.5.0
MOTO_VERSION=5.2.5
BUCKET=chatvault-test
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
GARAGE="$CACHE/garage-$GARAGE_VERSION/bin/garage"
MOTO_VENV="$CACHE/moto-venv-$MOTO_VERSION"

log() { printf 's3-servers: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The python that has moto[server] at the pinned version ("" if none yet).
moto_python() {
  local check="import moto, moto.server, flask, flask_cors, importlib.metadata as m; \
assert m.version('moto') == '$MOTO_VERSION'"
  if python3 -c "$check" 2>/dev/null; then
    command -v python3
  elif [ -x "$MOTO_VENV/bin/python" ] && "$MOTO_VENV/bin/python" -c "$check" 2>/dev/null; then
    echo "$MOTO_VENV/bin/python"
  fi
}

install() {
  mkdir -p "$CACHE"
  if [ ! -x "$GARAGE" ]; then
    command -v cargo >/dev/null || die "cargo is needed to install Garage"
    log "installing Garage $GARAGE_VERSION with cargo into $CACHE (about 8 minutes, once)"
    cargo install garage --version "$GARAGE_VERSION" --locked \
      --root "$CACHE/garage-$GARAGE_VERSION" >&2
  fi
  if [ -z "$(moto_python)" ]; then
    log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV" || die "python3 -m venv failed (install python3-venv)"
    "$MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" >&2
    [ -n "$(moto_python)" ] || die "moto $MOTO_VERSION did not install"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }

# Polls URL until its HTTP status matches REGEX, while PID lives.
wait_for() { # URL REGEX PID NAME
  local status=none
  for _ in $(seq 1 200); do
    kill -0 "$3" 2>/dev/null || { log "$4 exited"; return 1; }
    status=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    if [[ "$status" =~ $2 ]]; then return 0; fi
    sleep 0.1
  done
  log "$4 did not answer in 20 s (last status $status)"
  return 1
}

stop_pid_file() { # FILE
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

start_garage() { # DIR ACCESS SECRET -> sets GARAGE_PORT
  local dir=$1 attempt
  for attempt in 1 2 3; do
    local s3_port rpc_port
    s3_port=$(free_port); rpc_port=$(free_port)
    cat > "$dir/garage/garage.toml" <<TOML
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(hex 32)"
[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
TOML
    GARAGE_DEFAULT_ACCESS_KEY=$2 GARAGE_DEFAULT_SECRET_KEY=$3 GARAGE_DEFAULT_BUCKET=$BUCKET \
      RUST_LOG=warn "$GARAGE" -c "$dir/garage/garage.toml" server --single-node --default-bucket \
      >> "$dir/garage/log" 2>&1 &
    echo $! > "$dir/garage.pid"
    # An unsigned request is refused (403) once the S3 API is up.
    if wait_for "http://127.0.0.1:$s3_port/$BUCKET" '^403$' "$(cat "$dir/garage.pid")" Garage; then
      GARAGE_PORT=$s3_port
      return 0
    fi
    stop_pid_file "$dir/garage.pid"
    log "Garage attempt $attempt failed (port taken?); see $dir/garage/log"
  done
  return 1
}

start_moto() { # DIR PYTHON -> sets MOTO_PORT
  local dir=$1 attempt
  for attempt in 1 2 3; do
    local port; port=$(free_port)
    "$2" -m moto.server -H 127.0.0.1 -p "$port" >> "$dir/moto.log" 2>&1 &
    echo $! > "$dir/moto.pid"
    if wait_for "http://127.0.0.1:$port/" '^(200|403)$' "$(cat "$dir/moto.pid")" moto; then
      MOTO_PORT=$port
      return 0
    fi
    stop_pid_file "$dir/moto.pid"
    log "moto attempt $attempt failed (port taken?); see $dir/moto.log"
  done
  return 1
}

start() {
  local dir=$1
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  stop "$dir"  # idempotent: a second start replaces the first
  rm -rf "$dir/garage" "$dir/env"
  mkdir -p "$dir/garage/meta" "$dir/garage/data"
  local access_key secret_key
  access_key="GK$(hex 12)"
  secret_key=$(hex 32)
  start_garage "$dir" "$access_key" "$secret_key" || { stop "$dir"; die "Garage did not start"; }
  start_moto "$dir" "$(moto_python)" || { stop "$dir"; die "moto did not start"; }
  # moto checks no signature: create its bucket with a plain PUT (200, or 409 if it exists).
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$MOTO_PORT/$BUCKET" || true)
  [[ "$status" =~ ^(200|409)$ ]] || { stop "$dir"; die "creating the moto bucket answered $status"; }

  cat > "$dir/env.tmp" <<ENV
export CHATVAULT_TEST_GARAGE_URL='s3://$BUCKET/tests?endpoint=http://127.0.0.1:$GARAGE_PORT&region=garage&path_style=true'
export CHATVAULT_TEST_GARAGE_ACCESS_KEY='$access_key'
export CHATVAULT_TEST_GARAGE_SECRET_KEY='$secret_key'
export CHATVAULT_TEST_GARAGE_PID='$(cat "$dir/garage.pid")'
export CHATVAULT_TEST_MOTO_URL='s3://$BUCKET/tests?endpoint=http://127.0.0.1:$MOTO_PORT&region=us-east-1&path_style=true'
export CHATVAULT_TEST_MOTO_ACCESS_KEY='testing-key'
export CHATVAULT_TEST_MOTO_SECRET_KEY='testing-secret'
export CHATVAULT_TEST_MOTO_PID='$(cat "$dir/moto.pid")'
ENV
  mv "$dir/env.tmp" "$dir/env"
  log "Garage on 127.0.0.1:$GARAGE_PORT, moto on 127.0.0.1:$MOTO_PORT; exports in $dir/env"
}

stop() {
  local dir=$1
  stop_pid_file "$dir/garage.pid"
  stop_pid_file "$dir/moto.pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: s3-servers.sh start DIR}" ;;
  stop) stop "${2:?usage: s3-servers.sh stop DIR}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
