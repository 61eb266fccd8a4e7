// The Swift side of the link test (scripts/test-bindings.sh, against Garage): a new iPhone answers
// the link offer of an Android phone (bindings/kotlin/.../LinkTest.kt) without the recovery key,
// shows the check code (a file here; the Kotlin side types it), joins, and syncs both ways. Then
// it opens again with its device key alone. Then the Android phone revokes it: its next sync is
// refused with DeviceRevoked, and it never receives what the phone wrote after.
import Foundation
import XCTest

@testable import ChatVault

private let env = ProcessInfo.processInfo.environment

private func required(_ name: String) throws -> String {
    guard let value = env[name], !value.isEmpty else {
        throw XCTSkip("\(name) is not set (scripts/test-bindings.sh sets it)")
    }
    return value
}

/// Waits (two minutes at most) for `path` and returns its text.
private func awaitFile(_ path: String) async throws -> String {
    let deadline = Date().addingTimeInterval(120)
    while !FileManager.default.fileExists(atPath: path) {
        if Date() > deadline { throw XCTSkip("\(path) never came") }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    return try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
}

final class LinkTests: XCTestCase {
    func testSwiftJoinsKotlinsOffer() async throws {
        let dir = try required("CHATVAULT_LINK_DIR")
        let store = try required("CHATVAULT_LINK_STORE")
        let state = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString).path
        let offer = try await awaitFile(dir + "/offer.txt")
        XCTAssertTrue(offer.hasPrefix("CHATVAULT-LINK:"))
        let deviceKey = try generateDeviceKey()
        let joining = try await LinkJoining.join(storeUrl: store, credentials: nil, stateDir: state,
                                                 deviceName: "Anna's iPhone", platform: "ios",
                                                 offerText: offer, deviceKey: deviceKey)
        let code = joining.checkCode()
        XCTAssertEqual(code.count, 6)
        try code.write(toFile: dir + "/code.txt.tmp", atomically: true, encoding: .utf8)
        try FileManager.default.moveItem(atPath: dir + "/code.txt.tmp", toPath: dir + "/code.txt")
        let iphone = try await joining.finish(cancel: nil)
        XCTAssertEqual(iphone.deviceId(), joining.deviceId())
        try iphone.setContentCache(enabled: true, maxBytes: nil)
        _ = try await iphone.sync(progress: nil, listener: nil)
        XCTAssertEqual(try iphone.messages(chatId: "family").map { $0.text }, ["from the Pixel"])
        try iphone.record(changes: [.upsertMessage(message: Message(chatId: "family", messageId: "s1",
                                                                    sender: "anna", sentAtMs: 2,
                                                                    text: "from the iPhone", replyTo: nil))])
        _ = try await iphone.sync(progress: nil, listener: nil)
        let devices = try iphone.devices()
        XCTAssertEqual(devices.count, 2)
        let pixel = devices.first { $0.name == "Anna's Pixel" }
        XCTAssertEqual(devices.first { $0.isThisDevice }?.addedBy, pixel?.deviceId)
        FileManager.default.createFile(atPath: dir + "/swift-synced", contents: Data())

        // The device key alone opens it again; another key does not.
        do {
            _ = try await Vault.openDevice(storeUrl: store, credentials: nil, stateDir: state,
                                           deviceName: "Anna's iPhone", platform: "ios",
                                           deviceKey: try generateDeviceKey())
            XCTFail("another device key opened the iPhone's state")
        } catch ChatVaultError.WrongKey {}

        // Revoked by the Pixel: refused from then on.
        _ = try await awaitFile(dir + "/revoked")
        try iphone.record(changes: [.upsertMessage(message: Message(chatId: "family", messageId: "s2",
                                                                    sender: "anna", sentAtMs: 4,
                                                                    text: "written after the revocation",
                                                                    replyTo: nil))])
        do {
            _ = try await iphone.sync(progress: nil, listener: nil)
            XCTFail("a revoked device synced")
        } catch ChatVaultError.DeviceRevoked {}
        XCTAssertEqual(try iphone.messages(chatId: "family").map { $0.text }.sorted(),
                       ["from the Pixel", "from the iPhone", "written after the revocation"])
        FileManager.default.createFile(atPath: dir + "/swift-refused", contents: Data())
    }
}
