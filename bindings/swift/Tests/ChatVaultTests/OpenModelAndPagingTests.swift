// The open message model (Message.kind, Message.payload, Chat.payload) and history paging
// (historyPage, fetchHistory) through the generated Swift binding, with a directory store and two
// devices. Run with the other ChatVaultTests by scripts/test-bindings.sh.
import Foundation
import XCTest

@testable import ChatVault

private let everyByte = Data((0...255).map { UInt8($0) })
// Exactly the payload limit (64 KiB), every byte value many times, in no simple repeating order.
private let fullPayload = Data((0..<65536).map { UInt8(truncatingIfNeeded: $0 * 31 + ($0 >> 8)) })
// 32 characters, 64 UTF-8 bytes: the limit counts bytes.
private let kind64Bytes = String(repeating: "é", count: 32)

// Seven ids per millisecond whose UTF-8 byte order differs from the order they are recorded in
// (and, for "～" U+FF5E against "😀" U+1F600, from UTF-16 order).
private let pagingIds = ["m", "😀", "B", "～", "a", "0", "Z"]

private func upsert(_ chat: String, _ id: String, _ at: Int64, _ text: String, kind: String = "",
                    payload: Data = Data()) -> Change {
    .upsertMessage(message: Message(chatId: chat, messageId: id, sender: "me", sentAtMs: at, text: text,
                                    replyTo: nil, kind: kind, payload: payload))
}

/// History order: send time, then the id's UTF-8 bytes.
private func precedes(_ a: Message, _ b: Message) -> Bool {
    a.sentAtMs != b.sentAtMs ? a.sentAtMs < b.sentAtMs : a.messageId.utf8.lexicographicallyPrecedes(b.messageId.utf8)
}

/// Pages from the newest until `next` is nil; returns the pages, newest first.
private func pageThrough(_ limit: UInt32,
                         _ fetch: (HistoryCursor?, UInt32) async throws -> HistoryPage) async throws -> [HistoryPage] {
    var pages: [HistoryPage] = []
    var cursor: HistoryCursor?
    repeat {
        let page = try await fetch(cursor, limit)
        pages.append(page)
        cursor = page.next
        if pages.count > 1000 { XCTFail("paging does not end"); break }
    } while cursor != nil
    return pages
}

/// Every message exactly once, older pages first; full pages; `next` is the oldest message's cursor.
private func checkPages(_ pages: [HistoryPage], _ limit: UInt32, _ expected: [Message],
                        file: StaticString = #filePath, line: UInt = #line) {
    let what = "page size \(limit)"
    XCTAssertEqual(pages.reversed().flatMap(\.messages), expected, what, file: file, line: line)
    XCTAssertEqual(pages.count, (expected.count + Int(limit) - 1) / Int(limit), what, file: file, line: line)
    for (i, page) in pages.enumerated() {
        XCTAssertFalse(page.messages.isEmpty, "\(what): empty page", file: file, line: line)
        XCTAssertEqual(page.messages.sorted(by: precedes), page.messages, "\(what): a page is oldest first",
                       file: file, line: line)
        if let next = page.next {
            XCTAssertEqual(page.messages.count, Int(limit), what, file: file, line: line)
            let oldest = page.messages[0]
            XCTAssertEqual(next, HistoryCursor(sentAtMs: oldest.sentAtMs, messageId: oldest.messageId), what,
                           file: file, line: line)
        } else {
            XCTAssertEqual(i, pages.count - 1, "\(what): nil next before the last page", file: file, line: line)
        }
    }
}

/// Keeps every change another device made, as delivered.
final class ChangeRecorder: ChangeListener, @unchecked Sendable {
    private let lock = NSLock()
    private var delivered: [Change] = []
    var changes: [Change] { lock.lock(); defer { lock.unlock() }; return delivered }
    func onChanges(device: String, changes: [Change]) -> Bool {
        lock.lock(); delivered.append(contentsOf: changes); lock.unlock()
        return true
    }
}

final class OpenModelAndPagingTests: XCTestCase {
    private var dir: URL!
    private var store: String { "file://" + dir.appendingPathComponent("bucket").path }

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: dir)
    }

    /// Opens device `name`; a new device keeps no message content until `withContentCache()`.
    private func open(_ name: String, _ key: RecoveryKey) async throws -> Vault {
        try await Vault.open(storeUrl: store, stateDir: dir.appendingPathComponent(name).path,
                             deviceName: name, platform: "ios", key: key)
    }

    func testKindsAndPayloadsRoundTripByteForByte() async throws {
        XCTAssertEqual(kind64Bytes.utf8.count, 64)
        let key = try RecoveryKey.generate()
        let phone = try await open("phone", key).withContentCache()
        let chat = Chat(chatId: "open", title: "Open model", members: ["a", "b"], payload: everyByte)
        let recorded = [
            Message(chatId: "open", messageId: "sticker", sender: "a", sentAtMs: 1, text: "", replyTo: nil,
                    kind: "sticker", payload: everyByte),
            Message(chatId: "open", messageId: "reaction", sender: "b", sentAtMs: 2, text: "👍", replyTo: "sticker",
                    kind: "reaction", payload: Data(everyByte.reversed())),
            Message(chatId: "open", messageId: "full", sender: "a", sentAtMs: 3, text: "64 KiB", replyTo: nil,
                    kind: "", payload: fullPayload),
            Message(chatId: "open", messageId: "defaults", sender: "a", sentAtMs: 4, text: "plain", replyTo: nil,
                    kind: kind64Bytes),
        ]
        XCTAssertEqual(recorded[3].payload, Data()) // the default
        XCTAssertEqual(Message(chatId: "c", messageId: "m", sender: "", sentAtMs: 0, text: "", replyTo: nil).kind, "")
        try phone.record(changes: [.upsertChat(chat: chat)] + recorded.map { .upsertMessage(message: $0) })
        XCTAssertEqual(try phone.messages(chatId: "open"), recorded)
        _ = try await phone.sync(progress: nil, listener: nil)

        let tablet = try await open("tablet", try RecoveryKey.parse(text: key.toText())).withContentCache()
        let recorder = ChangeRecorder()
        _ = try await tablet.sync(progress: nil, listener: recorder)
        let chats = try tablet.chats()
        XCTAssertEqual(chats.map(\.chat), [chat])
        XCTAssertEqual(chats.first?.chat.payload, everyByte)

        func check(_ messages: [Message], _ source: String) {
            XCTAssertEqual(messages.map(\.messageId), recorded.map(\.messageId), source)
            for (got, want) in zip(messages, recorded) {
                // Swift's String == ignores Unicode normalization: compare the kind's bytes.
                XCTAssertEqual(Array(got.kind.utf8), Array(want.kind.utf8), "\(source): \(want.messageId)")
                XCTAssertEqual(got.payload, want.payload, "\(source): \(want.messageId)")
            }
            XCTAssertEqual(messages, recorded, source)
        }
        check(try tablet.messages(chatId: "open"), "messages() on the second device")
        check(try await tablet.fetchChat(chatId: "open"), "fetchChat() on the second device")
        check(recorder.changes.compactMap { change in
            if case let .upsertMessage(message) = change { return message }
            return nil
        }, "ChangeListener")
        let upsertedChats = recorder.changes.compactMap { change -> Chat? in
            if case let .upsertChat(chat) = change { return chat }
            return nil
        }
        XCTAssertEqual(upsertedChats.map(\.payload), [everyByte])
    }

    func testTooLargeFieldsRefuseTheWholeBatch() async throws {
        let vault = try await open("phone", try RecoveryKey.generate()).withContentCache()
        let valid = upsert("c", "ok", 1, "fine", kind: "text", payload: Data([0, 255]))
        let cases: [(ChatVaultError, Change)] = [
            (.TooLarge(field: "payload", size: 65537, limit: 65536),
             upsert("c", "big", 2, "x", payload: Data(count: 65537))),
            (.TooLarge(field: "kind", size: 65, limit: 64), upsert("c", "big", 2, "x", kind: kind64Bytes + "!")),
            (.TooLarge(field: "payload", size: 65537, limit: 65536),
             .upsertChat(chat: Chat(chatId: "c", title: "t", members: [], payload: Data(repeating: 1, count: 65537)))),
            (.TooLarge(field: "text", size: 1_048_577, limit: 1_048_576),
             upsert("c", "big", 2, String(repeating: "a", count: 1_048_577))),
            (.TooLarge(field: "title", size: 1_048_577, limit: 1_048_576),
             .upsertChat(chat: Chat(chatId: "c", title: String(repeating: "t", count: 1_048_577), members: []))),
        ]
        for (expected, oversized) in cases {
            XCTAssertThrowsError(try vault.record(changes: [valid, oversized])) { error in
                guard case let ChatVaultError.TooLarge(field, size, limit) = error else {
                    return XCTFail("not TooLarge: \(error)")
                }
                XCTAssertEqual(ChatVaultError.TooLarge(field: field, size: size, limit: limit), expected)
            }
            XCTAssertEqual(try vault.messages(chatId: nil), [], "a refused batch recorded its valid message")
            XCTAssertEqual(try vault.chats(), [])
        }
        let report = try await vault.sync(progress: nil, listener: nil)
        XCTAssertEqual(report.operationsSent, 0)
        try vault.record(changes: [valid, upsert("c", "edge", 2, "x", kind: kind64Bytes, payload: fullPayload)])
        XCTAssertEqual(try vault.messages(chatId: "c").map(\.messageId), ["ok", "edge"])
    }

    func testHistoryPagesLocallyAndFromTheBucket() async throws {
        let key = try RecoveryKey.generate()
        let phone = try await open("phone", key).withContentCache()
        var changes = [upsert("other", "x", 1003, "another chat")]
        for t in Int64(1000)...1005 {
            changes += pagingIds.map { upsert("paged", "\($0)-\(t)", t, "at \(t)", payload: Data([UInt8(t % 256)])) }
        }
        try phone.record(changes: changes)
        _ = try await phone.sync(progress: nil, listener: nil)
        try phone.record(changes: [.deleteMessage(chatId: "paged", messageId: "a-1002")])
        _ = try await phone.sync(progress: nil, listener: nil)

        let expected = try phone.messages(chatId: "paged")
        XCTAssertEqual(expected.count, 41)
        XCTAssertFalse(expected.contains { $0.messageId == "a-1002" })
        XCTAssertEqual(expected.sorted(by: precedes), expected, "messages() is in history order")
        // Within one millisecond the order is by id bytes, not the recording order.
        XCTAssertEqual(expected.prefix(7).map(\.messageId),
                       ["0-1000", "B-1000", "Z-1000", "a-1000", "m-1000", "～-1000", "😀-1000"])

        // The tablet keeps no content (a new device's default): it pages from the bucket.
        let tablet = try await open("tablet", key)
        for limit: UInt32 in [3, 7, 1, 41, 100] {
            let local = try await pageThrough(limit) { try phone.historyPage(chatId: "paged", before: $0, limit: $1) }
            checkPages(local, limit, expected)
            let remote = try await pageThrough(limit) {
                try await tablet.fetchHistory(chatId: "paged", before: $0, limit: $1)
            }
            checkPages(remote, limit, expected)
            XCTAssertEqual(remote, local)
        }
        let first = try phone.historyPage(chatId: "paged", before: nil, limit: 3)
        XCTAssertEqual(first.messages.map(\.messageId), ["m-1005", "～-1005", "😀-1005"])
        XCTAssertEqual(first.next, HistoryCursor(sentAtMs: 1005, messageId: "m-1005"))
        let second = try phone.historyPage(chatId: "paged", before: first.next, limit: 3)
        XCTAssertEqual(second.messages.map(\.messageId), ["B-1005", "Z-1005", "a-1005"])
        // fetchHistory reads the bucket without changing the second device's state.
        XCTAssertEqual(try tablet.chats(), [])
        let empty = try phone.historyPage(chatId: "no such chat", before: nil, limit: 3)
        XCTAssertEqual(empty, HistoryPage(messages: [], next: nil))
    }
}
