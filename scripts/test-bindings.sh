#!/usr/bin/env bash
# Generates the foreign-language bindings from the compiled library (uniffi library mode) and runs
# each language's tests against it: Python, Kotlin on the JVM, and Swift (XCTest via SwiftPM in a
# Debian trixie chroot). Toolchains are installed on first use and cached in ~/.cache/chatvault
# (kotlinc from the npm package, JNA and JUnit from Debian, swiftlang 6.0.3 from trixie). It also
# compiles and runs the quickstart examples (examples/kotlin, examples/swift) against a directory
# store and checks what they print.
#
# With CHATVAULT_TEST_GARAGE_URL (and its keys) set, as the test command does after starting the
# servers, it then runs two tests against Garage: the cross-platform restore (Swift backs up,
# Kotlin restores and adds, Swift restores everything, the Rust CLI restores the same state), and
# the concurrent convergence test (a Swift and a Kotlin device of one vault sync conflicting
# changes at the same time, then must hold identical states).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
KOTLIN_VERSION=2.4.20

cargo build --quiet --lib --features ffi
cargo build --quiet -p uniffi-bindgen
library=target/debug/libchatvault.so

out=$(mktemp -d)
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { rm -rf "$out"; }

# What both quickstart examples must print about the restored vault, after "restored N changes".
expected_example() {
  cat <<'TEXT'
restored 2 chats, 4 messages
chat climbing "Climbing 🧗" [anna, ana] (1 messages)
  c1 ana: Saturday at the gym?
chat family "Family 👪" [anna, mum] (3 messages)
  m1 mum: Dinner at 7? [poll 796573006e6f]
  m2 anna: Yes! 🍝 (reply to m1)
  m3 mum: Bring bread, please
family, 2 per page, newest page first: [m2, m3] [m1]
TEXT
}
check_example() { # OUTPUT-FILE NAME
  cat "$1"
  awk '/^restored [0-9]+ chats/ { p = 1 } /^verified/ { p = 0 } p' "$1" > "$1.restored"
  if ! diff -u <(expected_example) "$1.restored"; then
    echo "the $2 example restored something else than it recorded (diff above)" >&2
    exit 1
  fi
  grep -q '^verified: 1 device(s), ' "$1" || { echo "the $2 example did not verify the bucket" >&2; exit 1; }
  echo "$2 example: restored and verified what it recorded"
}
trap cleanup EXIT
for language in python kotlin swift; do
  ./target/debug/uniffi-bindgen generate --no-format --library "$library" --language "$language" \
    --out-dir "$out/$language" >/dev/null
done

echo "--- Python"
cp "$library" "$out/python/"
python_bin=$(bash scripts/python-env.sh | tail -n 1)
CHATVAULT_PY_DIR="$out/python" "$python_bin" bindings/python/test_chatvault.py

echo "--- Python: a program using the binding exits cleanly, 100 runs out of 100"
# It aborted at interpreter exit now and then (SIGABRT, "FATAL: exception not rethrown"); see
# bindings/python/exit_cleanly.py and src/ffi/settle.rs. Each run must exit 0 with nothing on
# stderr. A run exercises the window only if a continuation ran on a runtime thread, which
# depends on timing; at least half of the runs must have.
exercised=0
for run in $(seq 1 100); do
  status=0
  CHATVAULT_PY_DIR="$out/python" "$python_bin" bindings/python/exit_cleanly.py \
    > "$out/exit.out" 2> "$out/exit.err" || status=$?
  if [ "$status" -ne 0 ] || [ -s "$out/exit.err" ]; then
    cat "$out/exit.out" "$out/exit.err" >&2
    echo "run $run of the exit program ended with status $status (output above)" >&2
    exit 1
  fi
  if ! grep -q '^continuations from runtime threads: 0$' "$out/exit.out"; then
    exercised=$((exercised + 1))
  fi
done
if [ "$exercised" -lt 50 ]; then
  echo "only $exercised of 100 exit runs had a continuation on a runtime thread" >&2
  exit 1
fi
echo "100 clean exits; $exercised of them resumed an await from a runtime thread"

echo "--- Kotlin (JVM)"
kotlin="$CACHE/kotlin-$KOTLIN_VERSION/package"
if [ ! -x "$kotlin/bin/kotlinc-jvm" ]; then
  mkdir -p "$CACHE/kotlin-$KOTLIN_VERSION"
  (cd "$CACHE/kotlin-$KOTLIN_VERSION" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null \
    && tar xzf "kotlin-compiler-$KOTLIN_VERSION.tgz" && chmod +x package/bin/*)
fi
if [ ! -f /usr/share/java/jna.jar ] || [ ! -f /usr/share/java/junit4.jar ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq libjna-java junit4 >/dev/null
fi
classpath="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar:/usr/share/java/junit4.jar"
# The tests and the example, not ChatVaultAndroid.kt (bindings/kotlin/src/main: Android only).
"$kotlin/bin/kotlinc-jvm" -nowarn -cp "$classpath" -d "$out/kotlin-classes" \
  "$out/kotlin/org/chatvault/chatvault.kt" bindings/kotlin/src/test/kotlin/org/chatvault/*.kt \
  examples/kotlin/Quickstart.kt
run_java() { # MAIN-CLASS ARGS...
  CHATVAULT_VECTORS="$root/tests/vectors" java -Djna.library.path="$root/target/debug" \
    -cp "$out/kotlin-classes:$classpath:/usr/share/java/hamcrest-core.jar:$kotlin/lib/kotlin-stdlib.jar" "$@"
}
run_kotlin() { # TEST_CLASS
  run_java org.junit.runner.JUnitCore "$1"
}
run_kotlin org.chatvault.ChatVaultTest

echo "--- Kotlin example (examples/kotlin/Quickstart.kt, directory store)"
mkdir -p "$out/kotlin-example"
run_java org.chatvault.examples.QuickstartKt "file://$out/kotlin-example/bucket" "$out/kotlin-example" \
  > "$out/kotlin-example.txt"
check_example "$out/kotlin-example.txt" Kotlin

echo "--- Android JNI entry point and ChatVaultAndroid.kt on the host JVM"
bash scripts/check-android-jni.sh "$kotlin"

echo "--- Swift (Linux, swift test in a trixie chroot)"
chroot_dir=$(bash scripts/swift-toolchain.sh | tail -n 1)
inside=/tmp/chatvault-swift-$$
pkg="$chroot_dir$inside"
mkdir -p "$pkg/Sources/ChatVaultFFI" "$pkg/Sources/ChatVault" "$pkg/Tests" "$pkg/lib" "$pkg/cross" "$pkg/conc" "$pkg/link"
cp "$out/swift/ChatVaultFFI.h" "$pkg/Sources/ChatVaultFFI/"
cat > "$pkg/Sources/ChatVaultFFI/module.modulemap" <<'MAP'
module ChatVaultFFI {
    header "ChatVaultFFI.h"
    link "chatvault"
    export *
}
MAP
cp "$out/swift/ChatVault.swift" "$pkg/Sources/ChatVault/"
cp -r bindings/swift/Tests/ChatVaultTests "$pkg/Tests/"
cp bindings/swift/Package.linux.swift "$pkg/Package.swift"
cp "$library" "$pkg/lib/"
cp -r tests/vectors "$pkg/vectors"
mount -t proc proc "$chroot_dir/proc"
cleanup() { umount "$chroot_dir/proc" 2>/dev/null || true; rm -rf "$pkg" "$out"; }
swift_build() { # DIR ARGS...: quiet when it works, the compiler's output when it does not
  local dir=$1 log
  shift
  if ! log=$(chroot "$chroot_dir" /bin/sh -c "cd $dir && swift build $* -Xlinker -L$inside/lib" 2>&1); then
    printf '%s\n' "$log" >&2
    return 1
  fi
}
swift_build "$inside" --build-tests
run_swift() { # SWIFT-TEST-ARGS... (extra environment comes from SWIFT_ENV, split on spaces)
  local extra=()
  read -r -a extra <<< "${SWIFT_ENV:-}"
  chroot "$chroot_dir" /usr/bin/env LD_LIBRARY_PATH="$inside/lib" CHATVAULT_VECTORS="$inside/vectors" \
    "${extra[@]}" /bin/sh -c "cd $inside && swift test --skip-build $* 2>&1"
}
run_swift --skip CrossPlatformTests --skip ConcurrencyTests --skip LinkTests

echo "--- Swift example (examples/swift, directory store)"
# Its own package (examples/swift/Package.linux.swift) beside the test package, same generated
# module and library.
example=$pkg/example
mkdir -p "$example/Sources/Quickstart" "$example/run"
cp -r "$pkg/Sources/ChatVaultFFI" "$pkg/Sources/ChatVault" "$example/Sources/"
cp examples/swift/Sources/Quickstart/main.swift "$example/Sources/Quickstart/"
cp examples/swift/Package.linux.swift "$example/Package.swift"
swift_build "$inside/example"
chroot "$chroot_dir" /usr/bin/env LD_LIBRARY_PATH="$inside/lib" \
  "$inside/example/.build/debug/Quickstart" "file://$inside/example/run/bucket" "$inside/example/run" \
  > "$out/swift-example.txt"
check_example "$out/swift-example.txt" Swift

if [ -z "${CHATVAULT_TEST_GARAGE_URL:-}" ]; then
  if [ "${CHATVAULT_REQUIRE_S3:-}" = 1 ]; then
    echo "cross-platform restore needs Garage: CHATVAULT_TEST_GARAGE_URL is not set" >&2
    exit 1
  fi
  echo "SKIPPED: cross-platform restore (no Garage; the test command starts it)"
  exit 0
fi

echo "--- Cross-platform restore through Garage: Swift -> Kotlin -> Swift -> Rust CLI"
run_id=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
store=$(printf '%s' "$CHATVAULT_TEST_GARAGE_URL" | sed "s|^s3://\([^/?]*\)/[^?]*|s3://\1/cross-$run_id|")
export AWS_ACCESS_KEY_ID="$CHATVAULT_TEST_GARAGE_ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$CHATVAULT_TEST_GARAGE_SECRET_KEY"
SWIFT_ENV="CHATVAULT_CROSS_STORE=$store CHATVAULT_CROSS_KEY_FILE=$inside/cross/key.txt AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
run_swift --filter CrossPlatformTests/testStep1SwiftBackup
CHATVAULT_CROSS_STORE="$store" CHATVAULT_CROSS_KEY_FILE="$pkg/cross/key.txt" run_kotlin org.chatvault.CrossPlatformTest
run_swift --filter CrossPlatformTests/testStep3SwiftRestoreAll
cargo run --quiet --features cli --bin chatvault -- --store "$store" --state "$out/cli-state" \
  --key-file "$pkg/cross/key.txt" restore --out "$out/restored.jsonl"
cat > "$out/expected.jsonl" <<'JSONL'
{"type":"chat","chat_id":"climbing","title":"Climbing 🧗","members":["anna","ana"]}
{"type":"chat","chat_id":"family","title":"Family 👪","members":["anna","mum"]}
{"type":"message","chat_id":"climbing","message_id":"c1","sender":"anna","sent_at_ms":3,"text":"Saturday? (edited on Android)","reply_to":null}
{"type":"message","chat_id":"climbing","message_id":"c3","sender":"anna","sent_at_ms":6,"text":"Written on Android ✅","reply_to":null}
{"type":"message","chat_id":"family","message_id":"f1","sender":"anna","sent_at_ms":1,"text":"Dinner at 8? 🍝 (edited)","reply_to":null}
{"type":"message","chat_id":"family","message_id":"f2","sender":"anna","sent_at_ms":2,"text":"Line one\nline \"two\"\ttab","reply_to":null}
JSONL
diff -u "$out/expected.jsonl" "$out/restored.jsonl"
echo "cross-platform restore: Swift, Kotlin and the Rust CLI agree"

echo "--- Concurrent Swift + Kotlin devices through Garage"
# One vault, two devices with their own state: each records its own messages and edits/deletes
# shared ones, and both sync $rounds rounds at the same time, in lockstep (barrier files in
# $pkg/conc after every sync), so that their pushes and pulls overlap and each sees the other's
# earlier rounds. Then each syncs once more and dumps its state; the dumps must be identical.
rounds=6
conc_store=$(printf '%s' "$CHATVAULT_TEST_GARAGE_URL" | sed "s|^s3://\([^/?]*\)/[^?]*|s3://\1/concurrent-$run_id|")
cargo run --quiet --features cli --bin chatvault -- keygen > "$pkg/conc/key.txt"
SWIFT_ENV="CHATVAULT_CONC_STORE=$conc_store CHATVAULT_CONC_KEY_FILE=$inside/conc/key.txt CHATVAULT_CONC_STATE=$inside/conc/swift-state CHATVAULT_CONC_DIR=$inside/conc CHATVAULT_CONC_DUMP=$inside/conc/swift.dump CHATVAULT_CONC_ROUNDS=$rounds AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
run_kotlin_device() { # STEP
  CHATVAULT_CONC_STEP="$1" CHATVAULT_CONC_STORE="$conc_store" CHATVAULT_CONC_KEY_FILE="$pkg/conc/key.txt" \
    CHATVAULT_CONC_STATE="$out/conc-kotlin-state" CHATVAULT_CONC_DIR="$pkg/conc" \
    CHATVAULT_CONC_DUMP="$pkg/conc/kotlin.dump" CHATVAULT_CONC_ROUNDS=$rounds \
    run_kotlin org.chatvault.ConcurrentDeviceTest
}
run_swift --filter ConcurrencyTests/testRounds > "$out/conc-swift.log" 2>&1 &
swift_pid=$!
run_kotlin_device rounds > "$out/conc-kotlin.log" 2>&1 &
kotlin_pid=$!
swift_rc=0
wait "$swift_pid" || swift_rc=$?
kotlin_rc=0
wait "$kotlin_pid" || kotlin_rc=$?
if [ "$swift_rc" != 0 ] || [ "$kotlin_rc" != 0 ] \
  || ! grep -q "swift: $rounds rounds" "$out/conc-swift.log" \
  || ! grep -q "kotlin: $rounds rounds" "$out/conc-kotlin.log"; then
  echo "concurrent rounds failed (Swift exit $swift_rc, Kotlin exit $kotlin_rc):" >&2
  cat "$out/conc-swift.log" "$out/conc-kotlin.log" >&2
  exit 1
fi
grep -h -o -E "(swift|kotlin): $rounds rounds.*" "$out/conc-swift.log" "$out/conc-kotlin.log"
run_swift --filter ConcurrencyTests/testFinalSyncAndDump
run_kotlin_device dump
diff -u "$pkg/conc/swift.dump" "$pkg/conc/kotlin.dump"
for device in swift kotlin; do
  count=$(grep -c -P "^message\tshared\t$device-r[0-9]+\t" "$pkg/conc/swift.dump" || true)
  if [ "$count" != "$rounds" ]; then
    echo "the converged state holds $count of the $rounds round messages of the $device device" >&2
    cat "$pkg/conc/swift.dump" >&2
    exit 1
  fi
  grep -q -P "^chat\t$device-only\t" "$pkg/conc/swift.dump" \
    || { echo "the converged state lacks the $device device's own chat" >&2; exit 1; }
done
grep -P '^chat\t' "$pkg/conc/swift.dump"
echo "concurrent devices: identical states ($(grep -c '^chat' "$pkg/conc/swift.dump") chats, $(grep -c '^message' "$pkg/conc/swift.dump") messages) with both devices' changes"

echo "--- A Kotlin device links a Swift device through Garage (no recovery key on the Swift one)"
# The Kotlin phone offers, the Swift phone answers and shows the code, the Kotlin side types it
# (files in $pkg/link stand in for the QR code and the person), then both sync both ways.
link_store=$(printf '%s' "$CHATVAULT_TEST_GARAGE_URL" | sed "s|^s3://\([^/?]*\)/[^?]*|s3://\1/link-$run_id|")
SWIFT_ENV="CHATVAULT_LINK_STORE=$link_store CHATVAULT_LINK_DIR=$inside/link AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
  run_swift --filter LinkTests/testSwiftJoinsKotlinsOffer > "$out/link-swift.log" 2>&1 &
swift_pid=$!
CHATVAULT_LINK_STORE="$link_store" CHATVAULT_LINK_DIR="$pkg/link" run_kotlin org.chatvault.LinkTest \
  > "$out/link-kotlin.log" 2>&1 &
kotlin_pid=$!
swift_rc=0
wait "$swift_pid" || swift_rc=$?
kotlin_rc=0
wait "$kotlin_pid" || kotlin_rc=$?
if [ "$swift_rc" != 0 ] || [ "$kotlin_rc" != 0 ] \
  || ! grep -q "kotlin: linked" "$out/link-kotlin.log" \
  || ! grep -q "kotlin: revoked" "$out/link-kotlin.log" \
  || ! grep -q -E "Executed 1 test, with 0 failures" "$out/link-swift.log"; then
  echo "the Kotlin-Swift link failed (Swift exit $swift_rc, Kotlin exit $kotlin_rc):" >&2
  cat "$out/link-swift.log" "$out/link-kotlin.log" >&2
  exit 1
fi
grep -h -o "kotlin: linked.*" "$out/link-kotlin.log"
grep -h -o "kotlin: revoked.*" "$out/link-kotlin.log"
echo "Kotlin linked Swift: both synced both ways; Swift never held the recovery key"
echo "Kotlin revoked Swift: Swift's next sync was refused (DeviceRevoked), its later write too"
