// Android set-up of chatvault: part of the Android library module only. It needs
// android.content.Context, so the JVM tests (scripts/test-bindings.sh) do not compile it; it has
// not been compiled on the Linux CI machine (no Android SDK there).
package org.chatvault

import android.content.Context

/**
 * Call [init] once, before the first [Vault.open] or [Vault.openWithCredentials] with an
 * `https://` store, typically from `Application.onCreate`:
 *
 * ```kotlin
 * class App : Application() {
 *     override fun onCreate() {
 *         super.onCreate()
 *         ChatVaultAndroid.init(this)
 *     }
 * }
 * ```
 *
 * The S3 store checks server certificates with Android's own trust manager (through
 * rustls-platform-verifier); without this call the first HTTPS request fails.
 */
object ChatVaultAndroid {
    @Volatile
    private var initialised = false

    init {
        // The same libchatvault.so that JNA opens for the generated binding: the Android linker
        // loads it once, so the TLS set-up below is seen by the S3 store.
        System.loadLibrary("chatvault")
    }

    /**
     * Hands the application context to the native TLS verifier. Safe to call more than once and
     * from any thread; later calls do nothing.
     *
     * @throws IllegalStateException if the native set-up fails (a missing
     *   `org.rustls:rustls-platform-verifier` dependency, or classes removed by R8).
     */
    @JvmStatic
    fun init(context: Context) {
        if (initialised) return
        synchronized(this) {
            if (!initialised) {
                // The application context lives as long as the process; an Activity would leak.
                initTls(context.applicationContext ?: context)
                initialised = true
            }
        }
    }

    /**
     * The JNI entry point (`Java_org_chatvault_ChatVaultAndroid_initTls` in src/ffi/android.rs).
     * Prefer [init], which calls it once.
     */
    @JvmStatic
    external fun initTls(context: Context)
}
