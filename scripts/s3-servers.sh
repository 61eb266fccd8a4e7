#!/usr/bin/env bash
# Installs (cached, idempotent) and runs the two real S3 servers the tests use, on loopback only:
#   Garage 2.5.0 - a real S3 store: checks SigV4 signatures, ignores conditional writes;
#   moto server  - an AWS emulator: implements conditional writes, enforces multipart part sizes.
#
#   scripts/s3-servers.sh install      install both (Garage: cargo install, ~8 min the first time)
#   scripts/s3-servers.sh start DIR    start both with state in DIR; writes DIR/env (shell exports)
#   scripts/s3-servers.sh stop DIR     stop them
set -euo pipefail

GARAGE_VERSION=2.5.0
MOTO_VERSION=5.2.5
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
GARAGE="$CACHE/garage-$GARAGE_VERSION/bin/garage"
MOTO_VENV="$CACHE/moto-$MOTO_VERSION"

log() { printf 's3-servers: %s\n' "$*" >&2; }

install() {
  if [ ! -x "$GARAGE" ]; then
    log "installing Garage $GARAGE_VERSION with cargo (cached in $CACHE; takes minutes once)"
    cargo install garage --version "$GARAGE_VERSION" --locked --root "$CACHE/garage-$GARAGE_VERSION" >&2
  fi
  if [ ! -x "$MOTO_VENV/bin/python" ] || ! "$MOTO_VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
    log "installing moto[server] $MOTO_VERSION into $MOTO_VENV"
    rm -rf "$MOTO_VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$MOTO_VENV" 2>/dev/null || {
      apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$MOTO_VENV"
    }
    "$MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # URL EXPECTED_STATUS_REGEX NAME
  for _ in $(seq 1 150); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    if [[ "$status" =~ $2 ]]; then return 0; fi
    sleep 0.1
  done
  log "$3 did not start (last status $status)"
  return 1
}

start() {
  local dir=$1
  install
  mkdir -p "$dir/garage/meta" "$dir/garage/data"
  dir=$(cd "$dir" && pwd)
  local s3_port rpc_port moto_port
  s3_port=$(free_port); rpc_port=$(free_port); moto_port=$(free_port)
  local access_key="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  local secret_key; secret_key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  cat > "$dir/garage/garage.toml" <<TOML
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
TOML
  GARAGE_DEFAULT_ACCESS_KEY=$access_key GARAGE_DEFAULT_SECRET_KEY=$secret_key \
    GARAGE_DEFAULT_BUCKET=chatvault-test RUST_LOG=warn \
    "$GARAGE" -c "$dir/garage/garage.toml" server --single-node --default-bucket \
    > "$dir/garage/log" 2>&1 &
  echo $! > "$dir/garage.pid"
  # An unsigned request is refused (403) once the S3 API is up.
  wait_for "http://127.0.0.1:$s3_port/chatvault-test" '^403$' Garage

  "$MOTO_VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$moto_port" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  wait_for "http://127.0.0.1:$moto_port/" '^(200|403)$' moto
  # moto accepts any credentials: create the bucket with a plain PUT.
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$moto_port/chatvault-test"

  cat > "$dir/env" <<ENV
export CHATVAULT_TEST_GARAGE_URL='s3://chatvault-test/tests?endpoint=http://127.0.0.1:$s3_port&region=garage&path_style=true'
export CHATVAULT_TEST_GARAGE_ACCESS_KEY='$access_key'
export CHATVAULT_TEST_GARAGE_SECRET_KEY='$secret_key'
export CHATVAULT_TEST_MOTO_URL='s3://chatvault-test/tests?endpoint=http://127.0.0.1:$moto_port&region=us-east-1&path_style=true'
export CHATVAULT_TEST_MOTO_ACCESS_KEY='testing'
export CHATVAULT_TEST_MOTO_SECRET_KEY='testing'
ENV
  log "Garage on 127.0.0.1:$s3_port, moto on 127.0.0.1:$moto_port; exports in $dir/env"
}

stop() {
  local dir=$1
  for name in garage moto; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: s3-servers.sh start DIR}" ;;
  stop) stop "${2:?usage: s3-servers.sh stop DIR}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
