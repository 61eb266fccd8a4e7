// Steps of the cross-platform restore test (scripts/test-bindings.sh runs them in order against
// Garage, interleaved with the Kotlin steps): an iPhone backs up, an Android phone restores and
// adds, the iPhone's replacement restores everything. Each test is one step, run on its own.
import Foundation
import XCTest

@testable import ChatVault

private let env = ProcessInfo.processInfo.environment

private func freshState() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString).path
}

private func msg(_ chat: String, _ id: String, _ text: String, _ at: Int64) -> Change {
    .upsertMessage(message: Message(chatId: chat, messageId: id, sender: "anna", sentAtMs: at,
                                    text: text, replyTo: nil))
}

final class CrossPlatformTests: XCTestCase {
    /// Step 1: a new vault on "Anna's iPhone": three chats, an edit, a deleted message, a deleted chat.
    func testStep1SwiftBackup() async throws {
        let key = try RecoveryKey.generate()
        try key.toText().write(toFile: env["CHATVAULT_CROSS_KEY_FILE"]!, atomically: true, encoding: .utf8)
        let phone = try await Vault.open(storeUrl: env["CHATVAULT_CROSS_STORE"]!, stateDir: freshState(),
                                         deviceName: "Anna's iPhone", platform: "ios", key: key)
        try phone.record(changes: [
            .upsertChat(chat: Chat(chatId: "family", title: "Family 👪", members: ["anna", "mum"])),
            msg("family", "f1", "Dinner at 7? 🍝", 1),
            msg("family", "f2", "Line one\nline \"two\"\ttab", 2),
            msg("family", "f1", "Dinner at 8? 🍝 (edited)", 1),
            .upsertChat(chat: Chat(chatId: "climbing", title: "Climbing 🧗", members: ["anna", "ana"])),
            msg("climbing", "c1", "Saturday?", 3),
            msg("climbing", "c2", "oops", 4),
            .deleteMessage(chatId: "climbing", messageId: "c2"),
            .upsertChat(chat: Chat(chatId: "old", title: "Old job", members: ["anna"])),
            msg("old", "o1", "bye", 5),
            .deleteChat(chatId: "old"),
        ])
        let report = try await phone.sync(progress: nil, listener: nil)
        XCTAssertEqual(report.objectsUp, 2, "its segment and the roster entry that adds this device")
    }

    /// Step 3: a new iPhone restores with only the key: everything, including Android's additions.
    func testStep3SwiftRestoreAll() async throws {
        let text = try String(contentsOfFile: env["CHATVAULT_CROSS_KEY_FILE"]!, encoding: .utf8)
        // It reads the restored messages from chatvault: the cache on before the first sync.
        let phone = try await Vault.open(storeUrl: env["CHATVAULT_CROSS_STORE"]!, stateDir: freshState(),
                                         deviceName: "Anna's new iPhone", platform: "ios",
                                         key: try RecoveryKey.parse(text: text)).withContentCache()
        _ = try await phone.sync(progress: nil, listener: nil)
        let chats = try phone.chats().map { $0.chat.chatId }
        XCTAssertEqual(chats, ["climbing", "family"])
        let texts = try phone.messages(chatId: nil).map { "\($0.chatId)/\($0.messageId)=\($0.text)" }
        XCTAssertEqual(texts, [
            "climbing/c1=Saturday? (edited on Android)",
            "climbing/c3=Written on Android ✅",
            "family/f1=Dinner at 8? 🍝 (edited)",
            "family/f2=Line one\nline \"two\"\ttab",
        ])
        let report = try await phone.verify()
        XCTAssertEqual(report.devices, 2)
        XCTAssertEqual(report.rosterEntries, 3)
        XCTAssertEqual(report.rosterRefused, 0)
        // Every device that synced is in the roster, this one marked, all added by the key.
        let devices = try phone.devices().map { "\($0.platform)/\($0.name)/\($0.isThisDevice)" }
        XCTAssertEqual(devices.sorted(), [
            "android/Anna's Pixel/false",
            "ios/Anna's iPhone/false",
            "ios/Anna's new iPhone/true",
        ])
        XCTAssertTrue(try phone.devices().allSatisfy { $0.addedBy == nil && $0.revokedAtMs == nil })
    }
}
