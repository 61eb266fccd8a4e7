#!/usr/bin/env bash
# Generates the foreign-language bindings from the compiled library (uniffi library mode) and runs
# each language's tests against it: Python, and Kotlin on the JVM. Toolchains are installed on
# first use and cached in ~/.cache/chatvault (kotlinc from the npm package, JNA and JUnit from
# Debian). Swift: see bindings/README.md.
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
for language in python kotlin; do
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
