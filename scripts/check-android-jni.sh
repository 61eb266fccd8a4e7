#!/usr/bin/env bash
# Runs the Android JNI entry point (src/ffi/android.rs, unchanged) and ChatVaultAndroid.kt on the
# host JVM, since no Android device or emulator is available here:
#   - a stand-in for rustls-platform-verifier's android module, made at run time from the
#     registry copy of the version Cargo.lock pins (its storage and init_with_env verbatim);
#   - a cdylib named chatvault with src/ffi/android.rs and a probe, built against the same jni;
#   - ChatVaultAndroid.kt compiled against a stand-in android.content.Context;
#   - a Java harness under -Xcheck:jni: null context, a context whose getClassLoader throws,
#     then ChatVaultAndroid.init twice.
# What it cannot show: the real verifier's Kotlin component, Android's linker and class loaders.
#
#   scripts/check-android-jni.sh KOTLIN_DIR      (the kotlinc distribution: bin/, lib/)
# scripts/test-bindings.sh runs it after the Kotlin tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
kotlin=${1:?usage: check-android-jni.sh KOTLIN_DIR}

verifier=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in packages if p["name"] == "rustls-platform-verifier"))')
jni_version=$(grep -A1 '^name = "jni"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ ! -f "$verifier/src/android.rs" ] || [ -z "$jni_version" ]; then
  echo "check-android-jni: no rustls-platform-verifier source or jni version found" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/verifier/src" "$work/lib/src" "$work/java/android/content" "$work/java/org/chatvault" "$work/classes"
cp Cargo.lock "$work/" # resolve to the versions chatvault itself uses
cat > "$work/Cargo.toml" <<'TOML'
[workspace]
members = ["verifier", "lib"]
resolver = "2"
TOML
cat > "$work/verifier/Cargo.toml" <<TOML
[package]
name = "rustls-platform-verifier"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
jni = { version = "=$jni_version", default-features = false }
once_cell = "1.9"
TOML
python3 - "$verifier/src/android.rs" > "$work/verifier/src/android.rs" <<'PY'
import sys
src = open(sys.argv[1]).read()
start = src.index("/// Initialize given a typical Android NDK")
end = src.index("/// Initialize with a runtime")
print("""#![allow(dead_code)]
// Stand-in for rustls-platform-verifier's android module: upstream's storage (Internal variant)
// and init_with_env, verbatim, plus a probe.
use jni::errors::Error as JNIError;
use jni::objects::{Global, JClassLoader, JObject};
use jni::{jni_sig, jni_str, Env, JavaVM};
use once_cell::sync::OnceCell;

static GLOBAL: OnceCell<GlobalStorage> = OnceCell::new();

enum GlobalStorage {
    Internal {
        java_vm: JavaVM,
        context: Global<JObject<'static>>,
        loader: Global<JClassLoader<'static>>,
    },
}
""")
print(src[start:end])
print("pub fn initialised() -> bool { GLOBAL.get().is_some() }")
PY
echo 'pub mod android;' > "$work/verifier/src/lib.rs"
cat > "$work/lib/Cargo.toml" <<TOML
[package]
name = "chatvault"
version = "0.0.0"
edition = "2024"
publish = false
[lib]
crate-type = ["cdylib"]
[dependencies]
jni = { version = "=$jni_version", default-features = false }
rustls-platform-verifier = { path = "../verifier" }
TOML
cat > "$work/lib/src/lib.rs" <<RS
//! chatvault's src/ffi/android.rs, unchanged, against the stand-in verifier.
#[path = "$root/src/ffi/android.rs"]
mod android;

#[unsafe(no_mangle)]
pub extern "system" fn Java_org_chatvault_Probe_verifierInitialised<'c>(
    _env: jni::EnvUnowned<'c>,
    _class: jni::objects::JClass<'c>,
) -> bool {
    rustls_platform_verifier::android::initialised()
}
RS
CARGO_TARGET_DIR="$root/target/android-jni-check" cargo build --quiet --manifest-path "$work/Cargo.toml"

cat > "$work/java/android/content/Context.java" <<'JAVA'
package android.content;
// Stand-in for android.jar's Context: what ChatVaultAndroid and the verifier call.
public abstract class Context {
    public abstract Context getApplicationContext();
    public ClassLoader getClassLoader() { return getClass().getClassLoader(); }
}
JAVA
cat > "$work/java/org/chatvault/Probe.java" <<'JAVA'
package org.chatvault;
public final class Probe { public static native boolean verifierInitialised(); }
JAVA
cat > "$work/java/org/chatvault/JniHarness.java" <<'JAVA'
package org.chatvault;

import android.content.Context;

public final class JniHarness {
    static final class App extends Context {
        public Context getApplicationContext() { return this; }
    }
    static final class Broken extends Context {
        public Context getApplicationContext() { return this; }
        @Override public ClassLoader getClassLoader() { throw new UnsupportedOperationException("boom"); }
    }
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
        System.out.println("ok: " + what);
    }

    public static void main(String[] args) {
        try {
            ChatVaultAndroid.initTls(null);
            check(false, "a null context was accepted");
        } catch (IllegalArgumentException e) {
            check(e.getMessage().contains("needs a Context"), "null context: IllegalArgumentException");
        }
        try {
            ChatVaultAndroid.initTls(new Broken());
            check(false, "a context without a class loader was accepted");
        } catch (UnsupportedOperationException e) {
            check("boom".equals(e.getMessage()), "an exception thrown by the context reaches the caller unchanged");
        }
        check(!Probe.verifierInitialised(), "nothing initialised after the failures");
        ChatVaultAndroid.init(new App());
        check(Probe.verifierInitialised(), "ChatVaultAndroid.init(context) initialises the verifier");
        ChatVaultAndroid.init(new App());
        ChatVaultAndroid.initTls(new App());
        check(Probe.verifierInitialised(), "calling again is harmless");
    }
}
JAVA
javac -d "$work/classes" "$work/java/android/content/Context.java"
"$kotlin/bin/kotlinc-jvm" -nowarn -cp "$work/classes" -d "$work/classes" \
  bindings/kotlin/src/main/kotlin/org/chatvault/ChatVaultAndroid.kt
javac -cp "$work/classes:$kotlin/lib/kotlin-stdlib.jar" -d "$work/classes" \
  "$work/java/org/chatvault/Probe.java" "$work/java/org/chatvault/JniHarness.java"
java -Xcheck:jni -Djava.library.path="$root/target/android-jni-check/debug" \
  -cp "$work/classes:$kotlin/lib/kotlin-stdlib.jar" org.chatvault.JniHarness 2>&1 | tee "$work/harness.log"
# -Xcheck:jni reports misuse without failing the run. HotSpot prints "WARNING in native method:
# ..." (for example "JNI call made with exception pending"), "FATAL ERROR in native method: ..."
# and "WARNING: JNI local refs: ..."; any of them fails the check.
if grep -q -i -E "warning in native method|fatal error in native method|warning: jni" "$work/harness.log"; then
  echo "the JVM's JNI checker complained (above)" >&2
  exit 1
fi
