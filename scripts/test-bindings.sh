#!/usr/bin/env bash
# Generates the foreign-language bindings from the compiled library (uniffi library mode) and runs
# each language's tests against it: Python, Kotlin on the JVM, and Swift (XCTest via SwiftPM in a
# Debian trixie chroot). Toolchains are installed on first use and cached in ~/.cache/chatvault
# (kotlinc from the npm package, JNA and JUnit from Debian, swiftlang 6.0.3 from trixie).
#
# With CHATVAULT_TEST_GARAGE_URL (and its keys) set, as the test command does after starting the
# servers, it then runs the cross-platform restore against Garage: Swift backs up, Kotlin
# restores and adds, Swift restores everything, and the Rust CLI restores the same state.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
KOTLIN_VERSION=2.4.20

cargo build --quiet --lib --features ffi
cargo build --quiet -p uniffi-bindgen
library=target/debug/libchatvault.so

out=$(mktemp -d)
cleanup() { rm -rf "$out"; }
trap cleanup EXIT
for language in python kotlin swift; do
  ./target/debug/uniffi-bindgen generate --no-format --library "$library" --language "$language" \
    --out-dir "$out/$language" >/dev/null
done

echo "--- Python"
cp "$library" "$out/python/"
python_bin=$(bash scripts/python-env.sh | tail -n 1)
CHATVAULT_PY_DIR="$out/python" "$python_bin" bindings/python/test_chatvault.py

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
"$kotlin/bin/kotlinc-jvm" -nowarn -cp "$classpath" -d "$out/kotlin-classes" \
  "$out/kotlin/org/chatvault/chatvault.kt" bindings/kotlin/src/test/kotlin/org/chatvault/*.kt
run_kotlin() { # TEST_CLASS
  CHATVAULT_VECTORS="$root/tests/vectors" java -Djna.library.path="$root/target/debug" \
    -cp "$out/kotlin-classes:$classpath:/usr/share/java/hamcrest-core.jar:$kotlin/lib/kotlin-stdlib.jar" \
    org.junit.runner.JUnitCore "$1"
}
run_kotlin org.chatvault.ChatVaultTest

echo "--- Swift (Linux, swift test in a trixie chroot)"
chroot_dir=$(bash scripts/swift-toolchain.sh | tail -n 1)
inside=/tmp/chatvault-swift-$$
pkg="$chroot_dir$inside"
mkdir -p "$pkg/Sources/ChatVaultFFI" "$pkg/Sources/ChatVault" "$pkg/Tests" "$pkg/lib" "$pkg/cross"
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
chroot "$chroot_dir" /bin/sh -c "cd $inside && swift build --build-tests -Xlinker -L$inside/lib >/dev/null"
run_swift() { # SWIFT-TEST-ARGS... (extra environment comes from SWIFT_ENV, split on spaces)
  local extra=()
  read -r -a extra <<< "${SWIFT_ENV:-}"
  chroot "$chroot_dir" /usr/bin/env LD_LIBRARY_PATH="$inside/lib" CHATVAULT_VECTORS="$inside/vectors" \
    "${extra[@]}" /bin/sh -c "cd $inside && swift test --skip-build $* 2>&1"
}
run_swift --skip CrossPlatformTests

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
