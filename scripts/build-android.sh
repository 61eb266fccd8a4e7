#!/usr/bin/env bash
# Builds the native half of the Android library module (bindings/kotlin): libchatvault.so
# (release, `--features ffi`, stripped) for arm64-v8a, armeabi-v7a and x86_64 into
# bindings/kotlin/src/main/jniLibs/<abi>/, and the uniffi-generated Kotlin binding into
# bindings/kotlin/src/main/kotlin/org/chatvault/chatvault.kt. The module's Gradle build runs it
# before compiling (task buildRustAndroid).
#
# Needs: rustup, the Android NDK r26 or newer (ANDROID_NDK_HOME, or ANDROID_NDK_ROOT, or the
# newest under $ANDROID_HOME/ndk or $ANDROID_SDK_ROOT/ndk), and cargo-ndk (installed with
# `cargo install cargo-ndk` if missing). CHATVAULT_ANDROID_API sets the minimum API level
# (default 24, the module's minSdk).
#
# Written for Linux and macOS; it has not been run on the CI machine, which has no NDK.
set -euo pipefail
cd "$(dirname "$0")/.."

module=bindings/kotlin
jni_libs=$module/src/main/jniLibs
kotlin_out=$module/src/main/kotlin
api=${CHATVAULT_ANDROID_API:-24}
# Android ABI and the matching Rust target.
abis=(arm64-v8a armeabi-v7a x86_64)
targets=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)

die() { echo "build-android: $*" >&2; exit 1; }

# --- The NDK
ndk=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}
if [ -z "$ndk" ]; then
  sdk=${ANDROID_HOME:-${ANDROID_SDK_ROOT:-}}
  if [ -n "$sdk" ] && [ -d "$sdk/ndk" ]; then
    # The newest side-by-side NDK (directories are named by version, e.g. 27.2.12479018).
    installed=()
    for dir in "$sdk"/ndk/*/; do
      if [ -f "$dir/source.properties" ]; then installed+=("${dir%/}"); fi
    done
    if [ "${#installed[@]}" -gt 0 ]; then
      ndk=$(printf '%s\n' "${installed[@]}" | sort -V | tail -n 1)
    fi
  fi
fi
if [ -z "$ndk" ] || [ ! -f "$ndk/source.properties" ]; then
  die "no Android NDK found: set ANDROID_NDK_HOME, or install one with the SDK manager (ANDROID_HOME/ndk)"
fi
ndk_version=$(sed -n 's/^Pkg.Revision *= *//p' "$ndk/source.properties")
[ "${ndk_version%%.*}" -ge 26 ] 2>/dev/null || die "NDK $ndk_version at $ndk is too old: r26 or newer is needed"
export ANDROID_NDK_HOME=$ndk # cargo-ndk uses the same NDK
case "$(uname -s)" in
  Linux) host_tag=linux-x86_64 ;;
  Darwin) host_tag=darwin-x86_64 ;; # also on Apple silicon: the NDK ships universal binaries there
  *) die "unsupported build host $(uname -s)" ;;
esac
ndk_bin=$ndk/toolchains/llvm/prebuilt/$host_tag/bin
[ -x "$ndk_bin/llvm-strip" ] || die "no llvm-strip in $ndk_bin"
echo "build-android: NDK $ndk_version at $ndk, API level $api"

# --- cargo-ndk and the Rust targets
if ! cargo ndk --version >/dev/null 2>&1; then
  echo "build-android: installing cargo-ndk"
  cargo install cargo-ndk --locked
fi
rustup target add "${targets[@]}"

# --- Build: one release library per ABI, copied by cargo-ndk into jniLibs/<abi>/.
# 64-bit libraries are linked for 16 KB pages (required by Google Play for Android 15+ devices;
# NDK r28+ does it by default, older ones need the flag).
export CARGO_TARGET_AARCH64_LINUX_ANDROID_RUSTFLAGS="-C link-arg=-Wl,-z,max-page-size=16384"
export CARGO_TARGET_X86_64_LINUX_ANDROID_RUSTFLAGS="-C link-arg=-Wl,-z,max-page-size=16384"
rm -rf "$jni_libs"
ndk_args=()
for abi in "${abis[@]}"; do ndk_args+=(-t "$abi"); done
cargo ndk --platform "$api" "${ndk_args[@]}" -o "$jni_libs" build --release --lib --features ffi

# --- The Kotlin binding, from an unstripped library (uniffi reads the metadata symbols that
# stripping removes). cargo-ndk leaves the unstripped builds in target/<triple>/release/, which
# also serve for symbolising crash reports (ndk-stack).
cargo build --quiet -p uniffi-bindgen
rm -f "$kotlin_out/org/chatvault/chatvault.kt"
cargo run --quiet -p uniffi-bindgen -- generate --no-format \
  --library "target/${targets[0]}/release/libchatvault.so" --language kotlin --out-dir "$kotlin_out"
[ -s "$kotlin_out/org/chatvault/chatvault.kt" ] || die "uniffi-bindgen wrote no $kotlin_out/org/chatvault/chatvault.kt"

# --- Strip what ships, and check each library exports what the Kotlin side binds by name.
for i in "${!abis[@]}"; do
  lib=$jni_libs/${abis[$i]}/libchatvault.so
  [ -f "$lib" ] || die "cargo-ndk produced no $lib"
  "$ndk_bin/llvm-strip" --strip-unneeded "$lib"
  symbols=$("$ndk_bin/llvm-nm" -D --defined-only "$lib")
  for symbol in Java_org_chatvault_ChatVaultAndroid_initTls uniffi_chatvault_fn_constructor_vault_open; do
    grep -q " $symbol\$" <<< "$symbols" || die "$lib does not export $symbol"
  done
  echo "build-android: $lib ($(wc -c < "$lib") bytes)"
done
echo "build-android: Kotlin binding in $kotlin_out/org/chatvault/chatvault.kt"
