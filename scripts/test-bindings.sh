#!/usr/bin/env bash
# Generates the foreign-language bindings from the compiled library (uniffi library mode) and runs
# each language's tests against it: Python, Kotlin on the JVM, and Swift (XCTest via SwiftPM in a
# Debian trixie chroot). Toolchains are installed on first use and cached in ~/.cache/chatvault
# (kotlinc from the npm package, JNA and JUnit from Debian, swiftlang 6.0.3 from trixie).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
KOTLIN_VERSION=2.4.20

cargo build --quiet --lib --features ffi
cargo build --quiet -p uniffi-bindgen
library=target/debug/libchatvault.so

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
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
  "$out/kotlin/org/chatvault/chatvault.kt" bindings/kotlin/src/test/kotlin/org/chatvault/ChatVaultTest.kt
CHATVAULT_VECTORS="$root/tests/vectors" java -Djna.library.path="$root/target/debug" \
  -cp "$out/kotlin-classes:$classpath:/usr/share/java/hamcrest-core.jar:$kotlin/lib/kotlin-stdlib.jar" \
  org.junit.runner.JUnitCore org.chatvault.ChatVaultTest

echo "--- Swift (Linux, swift test in a trixie chroot)"
chroot_dir=$(bash scripts/swift-toolchain.sh | tail -n 1)
inside=/tmp/chatvault-swift-$$
pkg="$chroot_dir$inside"
mkdir -p "$pkg/Sources/ChatVaultFFI" "$pkg/Sources/ChatVault" "$pkg/Tests" "$pkg/lib"
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
cleanup_swift() { umount "$chroot_dir/proc" 2>/dev/null || true; rm -rf "$pkg"; rm -rf "$out"; }
trap cleanup_swift EXIT
chroot "$chroot_dir" /bin/sh -c "cd $inside && swift build --build-tests -Xlinker -L$inside/lib >/dev/null \
  && LD_LIBRARY_PATH=$inside/lib CHATVAULT_VECTORS=$inside/vectors swift test --skip-build 2>&1"
