// The chatvault Android library: the uniffi-generated Kotlin binding, ChatVaultAndroid (TLS set-up)
// and libchatvault.so per ABI, packaged as an AAR. Not built on the Linux CI machine (no Gradle,
// no Android SDK/NDK there); see README.md for what is verified where.
//
//   ./gradlew assembleRelease           build/outputs/aar/chatvault-android-release.aar
//   ./gradlew publishToMavenLocal       org.chatvault:chatvault-android:0.1.0 in ~/.m2
//   ./gradlew test                      the JVM unit tests against the host build of the library
//
// `preBuild` runs scripts/build-android.sh (cargo-ndk, the NDK, three Rust targets) unless
// -Pchatvault.skipCargo=true is given, for builds where src/main/jniLibs and the generated
// binding were produced beforehand (for example by a separate CI step).
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
    `maven-publish`
}

group = "org.chatvault"
version = "0.1.0"

// This directory is bindings/kotlin of the chatvault repository.
val repoRoot: File = projectDir.resolve("../..").canonicalFile

// rustls-platform-verifier's Kotlin component must be exactly the version of the
// rustls-platform-verifier-android crate that Cargo.lock resolved, as its README requires.
val rustlsPlatformVerifierVersion: String = run {
    val crate = "rustls-platform-verifier-android"
    val lines = providers.fileContents(layout.projectDirectory.file("../../Cargo.lock")).asText.get().lines()
    val at = lines.indexOfFirst { it.trim() == "name = \"$crate\"" }
    val version = if (at < 0) {
        null
    } else {
        lines.drop(at + 1)
            .firstOrNull { it.trim().startsWith("version = ") }
            ?.substringAfter('"', "")
            ?.substringBefore('"', "")
    }
    if (version.isNullOrEmpty()) throw GradleException("$crate not found in $repoRoot/Cargo.lock")
    version
}

android {
    namespace = "org.chatvault"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        // Applied to the app that depends on this library when it shrinks with R8.
        consumerProguardFiles("consumer-rules.pro")
    }

    sourceSets["main"].apply {
        // scripts/build-android.sh writes src/main/jniLibs/<abi>/libchatvault.so (arm64-v8a,
        // armeabi-v7a, x86_64) and the generated src/main/kotlin/org/chatvault/chatvault.kt.
        jniLibs.srcDirs("src/main/jniLibs")
        java.srcDirs("src/main/kotlin")
    }

    buildTypes {
        release {
            // A library is not shrunk itself; consumer-rules.pro protects it in the app.
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    // The generated binding calls the library through JNA; the AAR flavour carries JNA's
    // Android native parts (libjnidispatch.so per ABI).
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    // uniffi's suspend functions (Vault.open, sync, verify, ...) run on kotlinx.coroutines.
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.9.0")
    // TLS certificate checks through Android's trust manager (see ChatVaultAndroid.init).
    implementation("org.rustls:rustls-platform-verifier:$rustlsPlatformVerifierVersion")

    // JVM unit tests load the host build of the library: they need JNA's jar, with the desktop
    // native parts, rather than the AAR.
    testImplementation("net.java.dev.jna:jna:5.14.0")
    testImplementation("junit:junit:4.13.2")
}

val skipCargo: Boolean = providers.gradleProperty("chatvault.skipCargo").map { it.toBoolean() }.getOrElse(false)

val buildRustAndroid = tasks.register<Exec>("buildRustAndroid") {
    group = "build"
    description = "Builds libchatvault.so for each ABI into src/main/jniLibs and generates the Kotlin binding (scripts/build-android.sh)."
    workingDir = repoRoot
    commandLine("bash", "scripts/build-android.sh")
    inputs.files(
        fileTree(repoRoot.resolve("src")),
        repoRoot.resolve("Cargo.toml"),
        repoRoot.resolve("Cargo.lock"),
        repoRoot.resolve("scripts/build-android.sh"),
    )
    outputs.dir("src/main/jniLibs")
    outputs.file("src/main/kotlin/org/chatvault/chatvault.kt")
}

val buildRustHost = tasks.register<Exec>("buildRustHost") {
    group = "build"
    description = "Builds the host library (target/debug) that the JVM unit tests load."
    workingDir = repoRoot
    commandLine("cargo", "build", "--lib", "--features", "ffi")
}

if (!skipCargo) {
    tasks.named("preBuild") { dependsOn(buildRustAndroid) }
}

tasks.withType<Test>().configureEach {
    dependsOn(buildRustHost)
    systemProperty("jna.library.path", repoRoot.resolve("target/debug").path)
    environment("CHATVAULT_VECTORS", repoRoot.resolve("tests/vectors").path)
    filter {
        // Steps of the multi-process tests that scripts/test-bindings.sh drives against Garage.
        excludeTestsMatching("org.chatvault.CrossPlatformTest")
        excludeTestsMatching("org.chatvault.ConcurrentDeviceTest")
    }
}

publishing {
    publications {
        register<MavenPublication>("release") {
            groupId = "org.chatvault"
            artifactId = "chatvault-android"
            version = project.version.toString()
            afterEvaluate { from(components["release"]) }
        }
    }
}
