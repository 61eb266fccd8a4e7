#!/usr/bin/env bash
# Builds bindings/swift/ChatVaultFFI.xcframework (release, stripped) and the generated Swift
# module for the Swift package. Run on a Mac with Xcode and the Rust targets
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin
# It cannot run on the Linux CI machine (no Xcode, no Apple targets); the Linux tests use
# scripts/test-bindings.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bindings/swift
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin)
for target in "${targets[@]}"; do
  cargo build --release --lib --features ffi --target "$target"
done

# Bindings come from an unstripped library (uniffi reads its metadata), generated once.
cargo run --quiet -p uniffi-bindgen -- generate --no-format \
  --library target/aarch64-apple-darwin/release/libchatvault.dylib --language swift --out-dir target/swift
mkdir -p "$out/Sources/ChatVault" target/swift/headers
cp target/swift/ChatVault.swift "$out/Sources/ChatVault/"
cp target/swift/ChatVaultFFI.h target/swift/headers/
cp target/swift/ChatVaultFFI.modulemap target/swift/headers/module.modulemap

# The two iOS simulator architectures share one slice.
mkdir -p target/ios-sim/release
lipo -create target/aarch64-apple-ios-sim/release/libchatvault.a target/x86_64-apple-ios/release/libchatvault.a \
  -output target/ios-sim/release/libchatvault.a
for lib in target/aarch64-apple-ios/release/libchatvault.a target/ios-sim/release/libchatvault.a \
  target/aarch64-apple-darwin/release/libchatvault.a; do
  strip -S -x "$lib"
done

rm -rf "$out/ChatVaultFFI.xcframework"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libchatvault.a -headers target/swift/headers \
  -library target/ios-sim/release/libchatvault.a -headers target/swift/headers \
  -library target/aarch64-apple-darwin/release/libchatvault.a -headers target/swift/headers \
  -output "$out/ChatVaultFFI.xcframework"
echo "built $out/ChatVaultFFI.xcframework"
