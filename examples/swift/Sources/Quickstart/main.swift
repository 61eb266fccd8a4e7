// chatvault quickstart in Swift: a phone creates a vault with a new recovery key, records two
// chats, syncs; a second device with a fresh state directory restores everything from the typed
// recovery key alone, prints it (a message's app-defined kind and payload bytes too) and pages
// through one chat's history. Same steps and output as examples/kotlin/Quickstart.kt.
//
//   swift run Quickstart [STORE_URL [WORK_DIR]]
//
// STORE_URL defaults to a directory store (file://…) in a new temporary directory; pass an
// s3://… URL (with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set) to use a bucket. In an iOS
// app, use Vault.openWithCredentials for S3 and keep the state directory in Application Support.
// scripts/test-bindings.sh builds and runs this file on Linux and checks its output.
import ChatVault
import Foundation

func message(_ chat: String, _ id: String, _ sender: String, _ atMs: Int64, _ text: String,
             replyTo: String? = nil, kind: String = "", payload: Data = Data()) -> Change {
    .upsertMessage(message: Message(chatId: chat, messageId: id, sender: sender, sentAtMs: atMs,
                                    text: text, replyTo: replyTo, kind: kind, payload: payload))
}

let arguments = CommandLine.arguments
let work = arguments.count > 2
    ? URL(fileURLWithPath: arguments[2])
    : FileManager.default.temporaryDirectory.appendingPathComponent("chatvault-quickstart-\(UUID().uuidString)")
let store = arguments.count > 1 ? arguments[1] : "file://" + work.appendingPathComponent("bucket").path

// First device: a new recovery key. Show its text to the person once; keep its bytes in the
// Keychain (kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly).
let recoveryKey = try RecoveryKey.generate()
let typed = recoveryKey.toText()
print("recovery key: \(typed)")

let phone = try await Vault.open(storeUrl: store, stateDir: work.appendingPathComponent("phone").path,
                                 deviceName: "Anna's iPhone", platform: "ios", key: recoveryKey)
print("vault \(phone.vaultId())")
let t: Int64 = 1_700_000_000_000
try phone.record(changes: [
    .upsertChat(chat: Chat(chatId: "family", title: "Family 👪", members: ["anna", "mum"])),
    // kind and payload are the app's own (at most 64 and 65,536 bytes), stored and returned
    // unchanged: here a poll with its options in the app's encoding.
    message("family", "m1", "mum", t, "Dinner at 7?", kind: "poll", payload: Data("yes\u{0}no".utf8)),
    message("family", "m2", "anna", t + 60_000, "Yes! 🍝", replyTo: "m1"),
    message("family", "m3", "mum", t + 120_000, "Bring bread"),
    message("family", "m3", "mum", t + 120_000, "Bring bread, please"), // an edit: same id
    .upsertChat(chat: Chat(chatId: "climbing", title: "Climbing 🧗", members: ["anna", "ana"])),
    message("climbing", "c1", "ana", t + 180_000, "Saturday at the gym?"),
    message("climbing", "c2", "anna", t + 240_000, "oops, wrong chat"),
    .deleteMessage(chatId: "climbing", messageId: "c2"),
])
let backup = try await phone.sync(progress: nil, listener: nil) // push, then pull
print("backed up: \(backup.operationsSent) changes in \(backup.objectsUp) object(s), \(backup.bytesUp) bytes")

// A new device: a fresh state directory and the typed key (case, spaces and dashes do not
// matter; a typo throws ChatVaultError.MistypedKey).
let tablet = try await Vault.open(storeUrl: store, stateDir: work.appendingPathComponent("tablet").path,
                                  deviceName: "Anna's tablet", platform: "android",
                                  key: try RecoveryKey.parse(text: typed.lowercased().replacingOccurrences(of: "-", with: " ")))
// A new device keeps no message content by default; this example reads it back from chatvault.
try tablet.setContentCache(enabled: true, maxBytes: nil)
let restore = try await tablet.sync(progress: nil, listener: nil)
print("restored \(restore.operationsApplied) changes from \(restore.objectsDown) object(s)")

let chats = try tablet.chats()
print("restored \(chats.count) chats, \(chats.reduce(0) { $0 + $1.messageCount }) messages")
for summary in chats {
    let chat = summary.chat
    let members = chat.members.joined(separator: ", ")
    print("chat \(chat.chatId) \"\(chat.title)\" [\(members)] (\(summary.messageCount) messages)")
    for m in try tablet.messages(chatId: chat.chatId) {
        let hex = m.payload.map { String(format: "%02x", $0) }.joined()
        print("  \(m.messageId) \(m.sender): \(m.text)" + (m.replyTo.map { " (reply to \($0))" } ?? "")
              + (m.kind.isEmpty ? "" : " [\(m.kind) \(hex)]"))
    }
}
// A history screen loads a page at a time, newest first: pass each page's `next` to get the page
// before it, until `next` is nil (fetchHistory does the same from the bucket).
var pages: [String] = []
var page = try tablet.historyPage(chatId: "family", before: nil, limit: 2)
while true {
    pages.append("[" + page.messages.map(\.messageId).joined(separator: ", ") + "]")
    guard let next = page.next else { break }
    page = try tablet.historyPage(chatId: "family", before: next, limit: 2)
}
print("family, 2 per page, newest page first: \(pages.joined(separator: " "))")
let verified = try await tablet.verify() // fetch and authenticate everything in the bucket
print("verified: \(verified.devices) device(s), \(verified.operations) changes")
