// swift-tools-version:5.9
// The quickstart as a command-line tool, for a Mac: it depends on the ChatVault Swift package in
// bindings/swift, which needs ChatVaultFFI.xcframework from scripts/build-xcframework.sh first.
//
//   scripts/build-xcframework.sh && cd examples/swift && swift run Quickstart
//
// In an iOS app, add bindings/swift as a package dependency instead and use the same calls.
// Package.linux.swift is the variant scripts/test-bindings.sh builds and runs on Linux.
import PackageDescription

let package = Package(
    name: "ChatVaultQuickstart",
    platforms: [.macOS(.v12), .iOS(.v15)],
    dependencies: [
        // A local package's identity is its directory name.
        .package(path: "../../bindings/swift"),
    ],
    targets: [
        .executableTarget(
            name: "Quickstart",
            dependencies: [.product(name: "ChatVault", package: "swift")],
            path: "Sources/Quickstart"
        ),
    ]
)
