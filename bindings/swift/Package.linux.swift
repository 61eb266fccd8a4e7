// swift-tools-version:5.9
// The package scripts/test-bindings.sh assembles on Linux: the generated C header as a system
// library linking the host build of libchatvault, the generated Swift module, and the XCTests.
// Apps use Package.swift (an XCFramework binary target) instead.
import PackageDescription

let package = Package(
    name: "ChatVault",
    targets: [
        .systemLibrary(name: "ChatVaultFFI", path: "Sources/ChatVaultFFI"),
        .target(name: "ChatVault", dependencies: ["ChatVaultFFI"], path: "Sources/ChatVault"),
        .testTarget(name: "ChatVaultTests", dependencies: ["ChatVault"], path: "Tests/ChatVaultTests"),
    ]
)
