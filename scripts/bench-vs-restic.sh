#!/usr/bin/env bash
# chatvault against restic, the real alternative (messaging apps back up their SQLite message
# database): full backup, three increments of 1,000 messages, fresh-device restore, peak RSS of
# every step and chatvault's local state, on one deterministic chat history.
#
#   scripts/bench-vs-restic.sh [--messages N] [--workdir DIR] [--keep] [--no-build]
#
#   --messages N   messages in the history (default 1000000; N=20000 runs in seconds)
#   --workdir DIR  where the run's temporary directory goes (default: $TMPDIR or /tmp); a 1M run
#                  needs about 3 GB there
#   --keep         keep the run's directory (outputs of every step) instead of deleting it
#   --no-build     use the binaries already in target/release (e.g. while the tree is mid-edit)
#
# What it does (idempotent; installs what it needs; runs as root on Debian 12 for apt-get):
#   1. apt-get installs restic (0.14 on Debian 12) and GNU time if missing.
#   2. Generates the history once with scripts/bench_vs_restic.py, cached in
#      ~/.cache/chatvault/bench-corpus-<N>-v1/: corpus.jsonl (chatvault JSON Lines), app.db (the
#      app's SQLite database with the same messages) and inc-{1,2,3}.jsonl (1,000 new messages
#      in 20 chats each).
#   3. Builds the release CLI and examples/bench_vs_restic.rs, and copies both binaries into the
#      run's directory (a rebuild by someone else during the run cannot swap them).
#   4. Runs, back to back, each step under /usr/bin/time -v (wall clock, peak RSS):
#      restic:    init; backup app.db; three times: the app adds an increment, backup;
#                 restore latest into an empty directory with an empty cache.
#      CLI:       keygen, init, import corpus.jsonl, sync --json (full backup); three times:
#                 import inc-K.jsonl, sync --json; a fresh device (new state dir): sync, then
#                 restore --out. The state dir's size is sampled every 100 ms during the import
#                 and the full sync (SQLite -wal file included).
#      Rust API:  backup (record in batches of 1,000, sync), restore to a ChangeListener on a
#                 fresh device, amortized increments (200 syncs of 10 messages on a vault of the
#                 first 200,000 messages).
#      Bytes per increment: restic = growth of the repository directory (du -sb), chatvault =
#      bytes_up of the sync report (the bucket directory's growth is also recorded).
#   5. Prints a markdown table: chatvault, restic, ratio and the goal of each figure, then every
#      step's wall time and peak RSS.
#
# The machine's other work makes wall times noisy; the files are in the page cache for every
# tool alike (nothing drops caches).
set -euo pipefail

CORPUS_VERSION=v1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
MESSAGES=1000000
WORKBASE="${TMPDIR:-/tmp}"
KEEP=0
BUILD=1
W=""
BG_PID=""

log() { printf 'bench-vs-restic: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --messages) [ $# -ge 2 ] || die "--messages needs a number"; MESSAGES="$2"; shift 2 ;;
    --messages=*) MESSAGES="${1#*=}"; shift ;;
    --workdir) [ $# -ge 2 ] || die "--workdir needs a directory"; WORKBASE="$2"; shift 2 ;;
    --workdir=*) WORKBASE="${1#*=}"; shift ;;
    --keep) KEEP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if ! [[ "$MESSAGES" =~ ^[0-9]+$ ]] || [ "$MESSAGES" -lt 1000 ]; then
  die "--messages must be a whole number of at least 1000, not '$MESSAGES'"
fi

cleanup() {
  local status=$?
  if [ -n "$BG_PID" ]; then
    kill "$BG_PID" 2>/dev/null || true
    wait "$BG_PID" 2>/dev/null || true
  fi
  if [ -n "$W" ] && [ -d "$W" ]; then
    if [ "$KEEP" = 1 ] || [ "$status" != 0 ]; then
      log "run directory kept: $W"
    else
      rm -rf "$W"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. tools ----------------------------------------------------------------------------------
apt_install() {
  [ "$(id -u)" = 0 ] || die "$* missing and not root: install it (apt-get install -y $*)"
  command -v apt-get >/dev/null || die "$* missing and no apt-get: install it"
  log "installing $* with apt-get"
  if ! apt-get install -y "$@" >/dev/null; then
    apt-get update >/dev/null || die "apt-get update failed"
    apt-get install -y "$@" >/dev/null || die "apt-get install $* failed"
  fi
}
command -v restic >/dev/null || apt_install restic
[ -x /usr/bin/time ] || apt_install time
# Debian's python3 (its sqlite3 module), else whichever python3 is on the PATH.
[ -x /usr/bin/python3 ] || command -v python3 >/dev/null || apt_install python3
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
"$PYTHON" -c 'import sqlite3' 2>/dev/null || die "$PYTHON has no sqlite3 module"
command -v cargo >/dev/null || die "cargo not found (a Rust toolchain is needed)"
RESTIC_VERSION="$(restic version | awk '{print $2}')"

# --- 2. corpus ---------------------------------------------------------------------------------
CORPUS="$CACHE/bench-corpus-$MESSAGES-$CORPUS_VERSION"
if [ ! -f "$CORPUS/meta.json" ]; then
  mkdir -p "$CACHE"
  log "generating $MESSAGES messages into $CORPUS (once; about 40 s per million)"
  rm -rf "$CORPUS.tmp.$$"
  "$PYTHON" "$ROOT/scripts/bench_vs_restic.py" corpus --messages "$MESSAGES" \
    --out "$CORPUS.tmp.$$" || { rm -rf "$CORPUS.tmp.$$"; die "corpus generation failed"; }
  rm -rf "$CORPUS"
  mv "$CORPUS.tmp.$$" "$CORPUS"
fi

# --- 3. build ----------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building the release CLI and examples/bench_vs_restic.rs"
  (cd "$ROOT" && cargo build --release --quiet --features cli --bin chatvault \
    --example bench_vs_restic) || die "cargo build failed (see above)"
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

W="$(mktemp -d "$WORKBASE/chatvault-vs-restic.XXXXXX")" || die "cannot create a directory in $WORKBASE"
mkdir -p "$W/bin" "$W/t"
cp "$TARGET/release/chatvault" "$TARGET/release/examples/bench_vs_restic" "$W/bin/" \
  || die "built binaries not found under $TARGET/release"
CV="$W/bin/chatvault"
API="$W/bin/bench_vs_restic"
RESULTS="$W/results"
: >"$RESULTS"
result() { printf '%s %s\n' "$1" "$2" >>"$RESULTS"; }
size_of() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
json_field() { sed -n "s/.*\"$2\":\\([0-9][0-9]*\\).*/\\1/p" "$1" | tail -1; }

result messages "$MESSAGES"
result restic.version "$RESTIC_VERSION"
# The tree's commit and a hash of its uncommitted changes (what a build just made), and a hash of
# the CLI binary measured (the same binary in two runs means the same code, even with --no-build).
rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then
  rev="$rev+diff:$(git -C "$ROOT" diff HEAD | sha256sum | cut -c1-8)"
fi
result chatvault.rev "$rev,bin:$(sha256sum "$CV" | cut -c1-8)"
result app_db_bytes "$(stat -c %s "$CORPUS/app.db")"
result corpus_jsonl_bytes "$(stat -c %s "$CORPUS/corpus.jsonl")"

step_failed() {
  local name=$1
  log "step $name failed; its stderr ($W/t/$name.err) ends with:"
  tail -n 20 "$W/t/$name.err" >&2 || true
  exit 1
}

# measure NAME CMD...: runs CMD under /usr/bin/time -v; stdout in t/NAME.out, stderr in
# t/NAME.err, the time report in t/NAME.time.
measure() {
  local name=$1
  shift
  log "$name"
  /usr/bin/time -v -o "$W/t/$name.time" "$@" >"$W/t/$name.out" 2>"$W/t/$name.err" \
    || step_failed "$name"
}

# measure_sampled NAME DIR KEY CMD...: measure, sampling DIR's size every 100 ms; records the
# peak as result KEY.
measure_sampled() {
  local name=$1 dir=$2 key=$3 peak=0 size status=0
  shift 3
  log "$name"
  /usr/bin/time -v -o "$W/t/$name.time" "$@" >"$W/t/$name.out" 2>"$W/t/$name.err" &
  BG_PID=$!
  while kill -0 "$BG_PID" 2>/dev/null; do
    size=$(size_of "$dir")
    [ "$size" -le "$peak" ] || peak=$size
    sleep 0.1
  done
  wait "$BG_PID" || status=$?
  BG_PID=""
  [ "$status" = 0 ] || step_failed "$name"
  size=$(size_of "$dir")
  [ "$size" -le "$peak" ] || peak=$size
  result "$key" "$peak"
}

log "run directory $W; $MESSAGES messages; restic $RESTIC_VERSION"

# --- 4a. restic ----------------------------------------------------------------------------------
mkdir -p "$W/app"
cp "$CORPUS/app.db" "$W/app/app.db"
export RESTIC_PASSWORD=chatvault-bench RESTIC_REPOSITORY="$W/restic-repo"
export RESTIC_CACHE_DIR="$W/restic-cache"
measure restic.init restic init
(cd "$W/app" && measure restic.backup restic backup app.db)
result restic.repo_after_backup "$(size_of "$W/restic-repo")"
result restic.cache_after_backup "$(size_of "$W/restic-cache")"
for k in 1 2 3; do
  "$PYTHON" "$ROOT/scripts/bench_vs_restic.py" increment --db "$W/app/app.db" \
    --jsonl "$CORPUS/inc-$k.jsonl" || die "adding increment $k to app.db failed"
  before=$(size_of "$W/restic-repo")
  (cd "$W/app" && measure "restic.inc$k" restic backup app.db)
  result "restic.inc$k.bytes" "$(($(size_of "$W/restic-repo") - before))"
done
RESTIC_CACHE_DIR="$W/restic-cache-fresh" \
  measure restic.restore restic restore latest --target "$W/restic-restore"
cmp -s "$W/app/app.db" "$W/restic-restore/app.db" || die "restic's restored app.db differs"
rm -rf "$W/restic-restore" "$W/app"

# --- 4b. chatvault CLI ---------------------------------------------------------------------------
export CHATVAULT_STORE="file://$W/cv-bucket" CHATVAULT_KEY_FILE="$W/key.txt"
export CHATVAULT_STATE="$W/cv-phone"
measure cv.keygen "$CV" keygen
cp "$W/t/cv.keygen.out" "$W/key.txt"
measure cv.init "$CV" init
measure_sampled cv.import "$W/cv-phone" cv.state_peak_import "$CV" import "$CORPUS/corpus.jsonl"
measure_sampled cv.sync "$W/cv-phone" cv.state_peak_sync "$CV" sync --json
result cv.state_after_backup "$(size_of "$W/cv-phone")"
result cv.store_after_backup "$(size_of "$W/cv-bucket")"
for k in 1 2 3; do
  before=$(size_of "$W/cv-bucket")
  measure "cv.inc$k.import" "$CV" import "$CORPUS/inc-$k.jsonl"
  measure "cv.inc$k.sync" "$CV" sync --json
  bytes=$(json_field "$W/t/cv.inc$k.sync.out" bytes_up)
  [ -n "$bytes" ] || die "no bytes_up in the output of sync (t/cv.inc$k.sync.out)"
  result "cv.inc$k.bytes_up" "$bytes"
  result "cv.inc$k.store_growth" "$(($(size_of "$W/cv-bucket") - before))"
done
CHATVAULT_STATE="$W/cv-tablet" measure cv.restore.sync "$CV" sync --json
CHATVAULT_STATE="$W/cv-tablet" measure cv.restore.out "$CV" restore --out "$W/restored.jsonl"
lines=$(wc -l <"$W/restored.jsonl")
[ "$lines" = "$((200 + MESSAGES + 3000))" ] \
  || die "restore wrote $lines lines, expected $((200 + MESSAGES + 3000))"
rm -rf "$W/restored.jsonl" "$W/cv-tablet"

# --- 4c. chatvault Rust API ----------------------------------------------------------------------
measure api.backup "$API" backup --corpus "$CORPUS/corpus.jsonl" --store "$W/api-bucket" \
  --state "$W/api-phone" --key-file "$W/key.txt"
measure api.restore "$API" restore --store "$W/api-bucket" --state "$W/api-tablet" \
  --key-file "$W/key.txt"
restored=$(json_field "$W/t/api.restore.out" messages)
[ "$restored" = "$MESSAGES" ] || die "the Rust API restore has $restored messages, not $MESSAGES"
rm -rf "$W/api-tablet" "$W/api-phone"
measure api.amortized "$API" amortized --corpus "$CORPUS/corpus.jsonl" --store "$W/amortized-bucket" \
  --state "$W/amortized-phone" --key-file "$W/key.txt" --base 200000 --syncs 200 --per-sync 10

# --- 5. table ------------------------------------------------------------------------------------
"$PYTHON" "$ROOT/scripts/bench_vs_restic.py" table --dir "$W" | tee "$W/table.md"
