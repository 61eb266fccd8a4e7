//! Android start-up: the one JNI entry point of the library, called once by
//! `ChatVaultAndroid.init(context)` (bindings/kotlin) before the first HTTPS request.
//!
//! The S3 store checks server certificates with rustls-platform-verifier, which on Android asks
//! the system's trust manager through a small Kotlin component
//! (`org.rustls:rustls-platform-verifier`, a dependency of the Android library module). That
//! needs the JVM and the application `Context`, which uniffi cannot pass, hence plain JNI here.
//! Everything else crosses the FFI through uniffi (JNA).
//!
//! Nothing unwinds into the JVM: errors become a Java exception (`IllegalStateException`, or
//! `IllegalArgumentException` for a null context), a panic a `RuntimeException`.

use jni::EnvUnowned;
use jni::errors::{Error as JniError, ThrowRuntimeExAndDefault};
use jni::jni_str;
use jni::objects::{JClass, JObject};
use jni::refs::Reference as _;
use jni::strings::JNIString;

/// `org.chatvault.ChatVaultAndroid.initTls(context)` (a `@JvmStatic external fun`).
///
/// Hands the context to rustls-platform-verifier, which keeps a global reference to it and to
/// its class loader for the life of the process. Calling it again is harmless: the first
/// initialisation stays.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_chatvault_ChatVaultAndroid_initTls<'caller>(
    mut unowned_env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    context: JObject<'caller>,
) {
    unowned_env
        .with_env(|env| -> Result<(), JniError> {
            if context.is_null() {
                // Returns Err(JavaException) with the exception pending; the policy below then
                // leaves that exception alone.
                return env.throw_new(
                    jni_str!("java/lang/IllegalArgumentException"),
                    jni_str!("chatvault: initTls needs a Context, got null"),
                );
            }
            match rustls_platform_verifier::android::init_with_env(env, context) {
                Ok(()) => Ok(()),
                // A Java exception from the calls into the JVM is pending already: let it reach
                // the caller as it is.
                Err(error) if env.exception_check() => Err(error),
                Err(error) => env.throw_new(
                    jni_str!("java/lang/IllegalStateException"),
                    JNIString::from(format!(
                        "chatvault: initialising TLS certificate verification failed: {error}"
                    )),
                ),
            }
        })
        .resolve::<ThrowRuntimeExAndDefault>()
}
