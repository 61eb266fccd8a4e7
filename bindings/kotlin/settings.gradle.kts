// The chatvault Android library module (an AAR with the Kotlin binding and libchatvault.so for
// arm64-v8a, armeabi-v7a and x86_64). Build it from this directory; see README.md.
//
// An app that includes this directory as a module of its own build (instead of depending on the
// published AAR) must declare the same repositories in its settings.gradle.kts: the module
// declares none itself, so that apps using RepositoriesMode.FAIL_ON_PROJECT_REPOS can include it.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
        // The Kotlin half of rustls-platform-verifier (the S3 store's TLS certificate checks go
        // through Android's trust manager). Its authors publish it as a Maven repository on a
        // branch of their GitHub repository, not on Maven Central.
        maven {
            url = uri("https://github.com/rustls/rustls-platform-verifier/raw/maven-archive/android-release-support/maven/")
            content { includeGroup("org.rustls") }
        }
    }
}

rootProject.name = "chatvault-android"
