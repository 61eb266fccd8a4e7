// chatvault quickstart in Kotlin: a phone creates a vault with a new recovery key, records two
// chats, syncs; a second device with a fresh state directory restores everything from the typed
// recovery key alone, prints it (a message's app-defined kind and payload bytes too) and pages
// through one chat's history. Same steps and output as examples/swift.
//
//   Quickstart [STORE_URL [WORK_DIR]]
//
// STORE_URL defaults to a directory store (file://…) in a new temporary directory; pass an
// s3://… URL (with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set) to use a bucket. On Android,
// call ChatVaultAndroid.init(context) once first, and use Vault.openWithCredentials for S3.
// scripts/test-bindings.sh compiles and runs this file on the JVM and checks its output.
package org.chatvault.examples

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.runBlocking
import org.chatvault.Change
import org.chatvault.Chat
import org.chatvault.Message
import org.chatvault.RecoveryKey
import org.chatvault.Vault

private fun message(
    chat: String, id: String, sender: String, atMs: Long, text: String, replyTo: String? = null,
    kind: String = "", payload: ByteArray = byteArrayOf(),
) = Change.UpsertMessage(Message(chat, id, sender, atMs, text, replyTo, kind = kind, payload = payload))

private fun ByteArray.hex() = joinToString("") { "%02x".format(it) }

fun main(args: Array<String>) = runBlocking {
    val work = args.getOrNull(1)?.let { File(it) } ?: Files.createTempDirectory("chatvault-quickstart").toFile()
    val store = args.getOrNull(0) ?: ("file://" + File(work, "bucket").absolutePath)

    // First device: a new recovery key. Show its text to the person once; keep its bytes in the
    // Android Keystore (encrypted) or the iOS Keychain.
    val recoveryKey = RecoveryKey.generate()
    val typed = recoveryKey.toText()
    println("recovery key: $typed")

    val phone = Vault.open(store, File(work, "phone").path, "Anna's phone", "android", recoveryKey)
    println("vault ${phone.vaultId()}")
    val t = 1_700_000_000_000L
    phone.record(listOf(
        Change.UpsertChat(Chat("family", "Family 👪", listOf("anna", "mum"))),
        // kind and payload are the app's own (at most 64 and 65,536 bytes), stored and returned
        // unchanged: here a poll with its options in the app's encoding.
        message("family", "m1", "mum", t, "Dinner at 7?", kind = "poll", payload = "yes\u0000no".toByteArray()),
        message("family", "m2", "anna", t + 60_000, "Yes! 🍝", replyTo = "m1"),
        message("family", "m3", "mum", t + 120_000, "Bring bread"),
        message("family", "m3", "mum", t + 120_000, "Bring bread, please"), // an edit: same id
        Change.UpsertChat(Chat("climbing", "Climbing 🧗", listOf("anna", "ana"))),
        message("climbing", "c1", "ana", t + 180_000, "Saturday at the gym?"),
        message("climbing", "c2", "anna", t + 240_000, "oops, wrong chat"),
        Change.DeleteMessage("climbing", "c2"),
    ))
    val backup = phone.sync(null, null) // push, then pull
    println("backed up: ${backup.operationsSent} changes in ${backup.objectsUp} object(s), ${backup.bytesUp} bytes")
    phone.close()

    // A new device: a fresh state directory and the typed key (case, spaces and dashes do not
    // matter; a typo fails with ChatVaultException.MistypedKey).
    val tablet = Vault.open(store, File(work, "tablet").path, "Anna's tablet", "ios",
        RecoveryKey.parse(typed.lowercase().replace("-", " ")))
    // A new device keeps no message content by default; this example reads it back from chatvault.
    tablet.setContentCache(true, null)
    val restore = tablet.sync(null, null)
    println("restored ${restore.operationsApplied} changes from ${restore.objectsDown} object(s)")

    val chats = tablet.chats()
    println("restored ${chats.size} chats, ${chats.sumOf { it.messageCount.toLong() }} messages")
    for (summary in chats) {
        val chat = summary.chat
        println("chat ${chat.chatId} \"${chat.title}\" ${chat.members} (${summary.messageCount} messages)")
        for (m in tablet.messages(chat.chatId)) {
            println("  ${m.messageId} ${m.sender}: ${m.text}" + (m.replyTo?.let { " (reply to $it)" } ?: "") +
                (if (m.kind.isEmpty()) "" else " [${m.kind} ${m.payload.hex()}]"))
        }
    }
    // A history screen loads a page at a time, newest first: pass each page's `next` to get the
    // page before it, until `next` is null (fetchHistory does the same from the bucket).
    val pages = mutableListOf<String>()
    var page = tablet.historyPage("family", null, 2u)
    while (true) {
        pages += page.messages.joinToString(", ", "[", "]") { it.messageId }
        val next = page.next ?: break
        page = tablet.historyPage("family", next, 2u)
    }
    println("family, 2 per page, newest page first: ${pages.joinToString(" ")}")
    val verified = tablet.verify() // fetch and authenticate everything in the bucket
    println("verified: ${verified.devices} device(s), ${verified.operations} changes")
    tablet.close()
}
