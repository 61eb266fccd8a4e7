// The Kotlin device of the concurrent convergence test (scripts/test-bindings.sh, against Garage):
// see bindings/swift/Tests/ChatVaultTests/ConcurrencyTests.swift, which runs the same workload
// with the roles swapped. CHATVAULT_CONC_STEP selects the step ("rounds" or "dump"); the other
// test of the class is skipped.
package org.chatvault

import java.io.File
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test

private const val ME = "kotlin"
private const val OTHER = "swift"

private fun env(name: String): String =
    System.getenv(name)?.takeIf { it.isNotEmpty() } ?: throw IllegalStateException("$name is not set")

private val roundCount: Int get() = System.getenv("CHATVAULT_CONC_ROUNDS")?.toIntOrNull() ?: 6

// The dump reads messages from chatvault, so the device keeps the content cache from the start
// (a new device's default is off; turning it on again on the second open changes nothing).
private suspend fun openDevice(): Vault = Vault.open(
    env("CHATVAULT_CONC_STORE"), env("CHATVAULT_CONC_STATE"), "concurrent $ME", "android",
    RecoveryKey.parse(File(env("CHATVAULT_CONC_KEY_FILE")).readText().trim()),
).withContentCache()

private fun msg(chat: String, id: String, at: Long, text: String, replyTo: String? = null) =
    Change.UpsertMessage(Message(chat, id, ME, at, text, replyTo))

/** Round [round] of this device's changes (the Swift test has the same with the roles swapped). */
private fun changes(round: Int, rounds: Int): List<Change> {
    val changes = mutableListOf<Change>()
    if (round == 0) {
        changes += listOf(
            // Both devices create "shared" (two chat keys, converging on one) with different titles.
            Change.UpsertChat(Chat("shared", "Shared (made on $ME)", listOf("anna", ME))),
            Change.UpsertChat(Chat("$ME-only", "Only $ME 🤖", listOf("anna"))),
            Change.UpsertChat(Chat("doomed", "Doomed", listOf("anna"))),
            msg("doomed", "$ME-d0", 5, "written before the chat is deleted"),
        )
    }
    changes += listOf(
        msg("shared", "$ME-r$round", 1_000L + round, "round $round from $ME 🤖",
            replyTo = if (round > 0) "$ME-r${round - 1}" else null),
        // Both devices edit the same message every round: last writer wins, on both.
        msg("shared", "common", 1, "edited by $ME in round $round"),
        msg("$ME-only", "own-$round", 2_000L + round, "line one\nline \"two\"\ttab, round $round"),
    )
    if (round == 1) changes += msg("shared", "contested", 2, "contested, written by $ME")
    // Kotlin edits what Swift deletes in the same round.
    if (round == 2) changes += msg("shared", "contested", 2, "contested, edited by $ME")
    // Kotlin keeps writing into the chat Swift deletes halfway.
    if (round >= rounds / 2) changes += msg("doomed", "$ME-d$round", 5L + round, "written around the chat's deletion")
    return changes
}

/**
 * Marks this device as having reached [name] and waits for the other device to reach it too
 * (files in CHATVAULT_CONC_DIR); false if it does not within two minutes.
 */
private suspend fun barrier(dir: File, name: String): Boolean {
    File(dir, "$ME.$name").writeText("")
    val deadline = System.currentTimeMillis() + 120_000
    while (!File(dir, "$OTHER.$name").exists()) {
        if (System.currentTimeMillis() > deadline) return false
        delay(5)
    }
    return true
}

private fun escape(text: String) = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")

/** The state as sorted lines, formatted exactly as ConcurrencyTests.swift does. */
private fun dump(vault: Vault): String {
    val lines = mutableListOf<String>()
    for (summary in vault.chats().sortedBy { it.chat.chatId }) {
        val c = summary.chat
        lines += "chat\t${c.chatId}\t${escape(c.title)}\t${c.members.joinToString(",")}\t${summary.messageCount}"
        for (m in vault.messages(c.chatId).sortedBy { it.messageId }) {
            lines += "message\t${m.chatId}\t${m.messageId}\t${m.sender}\t${m.sentAtMs}\t${m.replyTo ?: "-"}\t${escape(m.text)}"
        }
    }
    return lines.joinToString("\n") + "\n"
}

class ConcurrentDeviceTest {
    /**
     * Step 1, at the same time as the Swift device's: open, then record and sync in lockstep
     * rounds (a barrier after every sync), so both devices' pushes and pulls overlap.
     */
    @Test
    fun rounds() = runBlocking {
        assumeTrue(System.getenv("CHATVAULT_CONC_STEP") == "rounds")
        val dir = File(env("CHATVAULT_CONC_DIR"))
        val vault = openDevice()
        assertTrue("the $OTHER device never got ready", barrier(dir, "ready"))
        var sent = 0UL
        var applied = 0UL
        for (round in 0 until roundCount) {
            vault.record(changes(round, roundCount))
            val report = vault.sync(null, null)
            assertTrue("round $round sent nothing", report.operationsSent > 0UL)
            sent += report.operationsSent
            applied += report.operationsApplied
            assertTrue("the $OTHER device did not finish round $round", barrier(dir, "round-$round"))
        }
        // The other device's rounds before the last were pushed before this device's last sync.
        assertTrue("no operation of the $OTHER device arrived during the rounds", applied > 0UL)
        println("$ME: $roundCount rounds, sent $sent operations, applied $applied from the other device meanwhile")
        vault.close()
    }

    /** Step 2, after both devices finished step 1: one more sync, then the canonical dump. */
    @Test
    fun finalSyncAndDump() = runBlocking {
        assumeTrue(System.getenv("CHATVAULT_CONC_STEP") == "dump")
        val vault = openDevice()
        vault.sync(null, null)
        val ids = vault.messages("shared").map { it.messageId }
        for (round in 0 until roundCount) {
            assertTrue("own message of round $round missing", "$ME-r$round" in ids)
            assertTrue("$OTHER's message of round $round missing", "$OTHER-r$round" in ids)
        }
        File(env("CHATVAULT_CONC_DUMP")).writeText(dump(vault))
        vault.verify()
        vault.close()
    }
}
