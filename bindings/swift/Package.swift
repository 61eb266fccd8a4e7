// swift-tools-version:5.9
// The Swift package apps add with SwiftPM. `scripts/build-xcframework.sh` (on a Mac) builds
// ChatVaultFFI.xcframework and generates Sources/ChatVault/ChatVault.swift next to this file.
import PackageDescription

let package = Package(
    name: "ChatVault",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "ChatVault", targets: ["ChatVault"]),
    ],
    targets: [
        .binaryTarget(name: "ChatVaultFFI", path: "ChatVaultFFI.xcframework"),
        .target(name: "ChatVault", dependencies: ["ChatVaultFFI"], path: "Sources/ChatVault"),
        .testTarget(name: "ChatVaultTests", dependencies: ["ChatVault"], path: "Tests/ChatVaultTests"),
    ]
)
