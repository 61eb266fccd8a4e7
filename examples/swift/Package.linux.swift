// swift-tools-version:5.9
// The quickstart package scripts/test-bindings.sh assembles on Linux: the generated C header as a
// system library linking the host build of libchatvault, the generated Swift module, and
// Sources/Quickstart/main.swift. Apps and Macs use Package.swift instead.
import PackageDescription

let package = Package(
    name: "ChatVaultQuickstart",
    targets: [
        .systemLibrary(name: "ChatVaultFFI", path: "Sources/ChatVaultFFI"),
        .target(name: "ChatVault", dependencies: ["ChatVaultFFI"], path: "Sources/ChatVault"),
        .executableTarget(name: "Quickstart", dependencies: ["ChatVault"], path: "Sources/Quickstart"),
    ]
)
