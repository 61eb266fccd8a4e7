// The Swift device of the concurrent convergence test (scripts/test-bindings.sh, against Garage):
// a Swift device and a Kotlin device of one vault (same recovery key, separate state
// directories) record distinct and conflicting changes and sync round after round at the same
// time; afterwards each syncs once more and writes a canonical dump of its state, and the script
// requires the two dumps to be equal. The Kotlin side is ConcurrentDeviceTest.kt, which runs the
// same workload with the roles swapped. Each test is one step, run on its own.
import Foundation
import XCTest

@testable import ChatVault

private let env = ProcessInfo.processInfo.environment
private let me = "swift"
private let other = "kotlin"

private func required(_ name: String) throws -> String {
    guard let value = env[name], !value.isEmpty else {
        throw XCTSkip("\(name) is not set (scripts/test-bindings.sh sets it)")
    }
    return value
}

/// The dump reads messages from chatvault, so the device keeps the content cache from the start
/// (a new device's default is off; turning it on again on the second open changes nothing).
private func openDevice() async throws -> Vault {
    let text = try String(contentsOfFile: try required("CHATVAULT_CONC_KEY_FILE"), encoding: .utf8)
    return try await Vault.open(storeUrl: try required("CHATVAULT_CONC_STORE"),
                                stateDir: try required("CHATVAULT_CONC_STATE"),
                                deviceName: "concurrent \(me)", platform: "ios",
                                key: try RecoveryKey.parse(text: text.trimmingCharacters(in: .whitespacesAndNewlines)))
        .withContentCache()
}

private func msg(_ chat: String, _ id: String, _ at: Int64, _ text: String, replyTo: String? = nil) -> Change {
    .upsertMessage(message: Message(chatId: chat, messageId: id, sender: me, sentAtMs: at, text: text,
                                    replyTo: replyTo))
}

/// Round `round` of this device's changes; ConcurrentDeviceTest.kt has the same with the roles
/// swapped, so the two devices write distinct ids and conflict on shared ones.
private func changes(round: Int, rounds: Int) -> [Change] {
    let r = Int64(round)
    var changes: [Change] = []
    if round == 0 {
        changes += [
            // Both devices create "shared" (two chat keys, converging on one) with different titles.
            .upsertChat(chat: Chat(chatId: "shared", title: "Shared (made on \(me))", members: ["anna", me])),
            .upsertChat(chat: Chat(chatId: "\(me)-only", title: "Only \(me) 🍏", members: ["anna"])),
            .upsertChat(chat: Chat(chatId: "doomed", title: "Doomed", members: ["anna"])),
            msg("doomed", "\(me)-d0", 5, "written before the chat is deleted"),
        ]
    }
    changes += [
        msg("shared", "\(me)-r\(round)", 1_000 + r, "round \(round) from \(me) 🍏",
            replyTo: round > 0 ? "\(me)-r\(round - 1)" : nil),
        // Both devices edit the same message every round: last writer wins, on both.
        msg("shared", "common", 1, "edited by \(me) in round \(round)"),
        msg("\(me)-only", "own-\(round)", 2_000 + r, "line one\nline \"two\"\ttab, round \(round)"),
    ]
    if round == 1 {
        changes.append(msg("shared", "contested", 2, "contested, written by \(me)"))
    }
    if round == 2 {
        // Swift deletes what Kotlin edits in the same round.
        changes.append(.deleteMessage(chatId: "shared", messageId: "contested"))
    }
    if round == rounds / 2 {
        // Swift deletes a chat Kotlin keeps writing into.
        changes.append(.deleteChat(chatId: "doomed"))
    }
    return changes
}

/// Marks this device as having reached `name` and waits for the other device to reach it too
/// (files in CHATVAULT_CONC_DIR); false if it does not within two minutes.
private func barrier(_ dir: String, _ name: String) async throws -> Bool {
    FileManager.default.createFile(atPath: "\(dir)/\(me).\(name)", contents: Data())
    let deadline = Date().addingTimeInterval(120)
    while !FileManager.default.fileExists(atPath: "\(dir)/\(other).\(name)") {
        if Date() > deadline { return false }
        try await Task.sleep(nanoseconds: 5_000_000)
    }
    return true
}

private func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
        .replacingOccurrences(of: "\t", with: "\\t")
}

/// The state as sorted lines, formatted exactly as ConcurrentDeviceTest.kt does.
private func dump(_ vault: Vault) throws -> String {
    var lines: [String] = []
    for summary in try vault.chats().sorted(by: { $0.chat.chatId < $1.chat.chatId }) {
        let c = summary.chat
        lines.append("chat\t\(c.chatId)\t\(escape(c.title))\t\(c.members.joined(separator: ","))\t\(summary.messageCount)")
        for m in try vault.messages(chatId: c.chatId).sorted(by: { $0.messageId < $1.messageId }) {
            lines.append("message\t\(m.chatId)\t\(m.messageId)\t\(m.sender)\t\(m.sentAtMs)\t\(m.replyTo ?? "-")\t\(escape(m.text))")
        }
    }
    return lines.joined(separator: "\n") + "\n"
}

final class ConcurrencyTests: XCTestCase {
    /// Step 1 (run at the same time as the Kotlin device's): open, then record and sync
    /// `CHATVAULT_CONC_ROUNDS` rounds in lockstep with the other device: both start each round
    /// together (a barrier after every sync), so their pushes and pulls overlap, and each round
    /// can see the other device's previous one.
    func testRounds() async throws {
        let dir = try required("CHATVAULT_CONC_DIR")
        let rounds = Int(env["CHATVAULT_CONC_ROUNDS"] ?? "") ?? 6
        let vault = try await openDevice()
        guard try await barrier(dir, "ready") else { return XCTFail("the \(other) device never got ready") }
        var applied: UInt64 = 0
        var sent: UInt64 = 0
        for round in 0..<rounds {
            try vault.record(changes: changes(round: round, rounds: rounds))
            let report = try await vault.sync(progress: nil, listener: nil)
            XCTAssertGreaterThan(report.operationsSent, 0, "round \(round) sent nothing")
            sent += report.operationsSent
            applied += report.operationsApplied
            guard try await barrier(dir, "round-\(round)") else {
                return XCTFail("the \(other) device did not finish round \(round)")
            }
        }
        // The other device's rounds before the last were pushed before this device's last sync.
        XCTAssertGreaterThan(applied, 0, "no operation of the \(other) device arrived during the rounds")
        print("\(me): \(rounds) rounds, sent \(sent) operations, applied \(applied) from the other device meanwhile")
    }

    /// Step 2 (after both devices finished step 1): one more sync, then the canonical dump.
    func testFinalSyncAndDump() async throws {
        let out = try required("CHATVAULT_CONC_DUMP")
        let rounds = Int(env["CHATVAULT_CONC_ROUNDS"] ?? "") ?? 6
        let vault = try await openDevice()
        _ = try await vault.sync(progress: nil, listener: nil)
        let ids = try vault.messages(chatId: "shared").map { $0.messageId }
        for round in 0..<rounds {
            XCTAssertTrue(ids.contains("\(me)-r\(round)"), "own message of round \(round) missing")
            XCTAssertTrue(ids.contains("\(other)-r\(round)"), "\(other)'s message of round \(round) missing")
        }
        try dump(vault).write(toFile: out, atomically: true, encoding: .utf8)
        _ = try await vault.verify()
    }
}
