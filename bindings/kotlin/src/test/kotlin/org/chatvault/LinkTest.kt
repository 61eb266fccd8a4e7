// The Kotlin side of the link test (scripts/test-bindings.sh, against Garage): an Android phone
// with the recovery key offers a link; the Swift side (bindings/swift/Tests/ChatVaultTests/
// LinkTests.swift) answers it as a new iPhone that never sees the recovery key. The offer and the
// check code travel through files in CHATVAULT_LINK_DIR, as a QR code and a person would carry
// them. Both then sync and see each other's messages and devices. Then the Pixel revokes the
// iPhone (lost): the iPhone's next sync is refused, and it never sees what the Pixel writes after.
package org.chatvault

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test

private fun linkEnv(name: String): String =
    System.getenv(name)?.takeIf { it.isNotEmpty() } ?: throw IllegalStateException("$name is not set")

/** Waits (two minutes at most) for [file] and returns its text. */
private suspend fun await(file: File): String {
    val deadline = System.currentTimeMillis() + 120_000
    while (!file.exists()) {
        check(System.currentTimeMillis() < deadline) { "${file.name} never came" }
        delay(20)
    }
    return file.readText().trim()
}

class LinkTest {
    @Test
    fun kotlinOffersAndSwiftJoins() = runBlocking {
        assumeTrue(System.getenv("CHATVAULT_LINK_DIR") != null)
        val dir = File(linkEnv("CHATVAULT_LINK_DIR"))
        val state = Files.createTempDirectory("chatvault-link-android").toFile()
        try {
            val android = Vault.open(linkEnv("CHATVAULT_LINK_STORE"), state.path, "Anna's Pixel", "android",
                RecoveryKey.generate()).withContentCache()
            android.record(listOf(Change.UpsertMessage(Message("family", "k1", "anna", 1, "from the Pixel", null))))
            android.sync(null, null)
            val offering = android.offerLink(120u, "bucket: garage".toByteArray())
            File(dir, "offer.txt.tmp").writeText(offering.text())
            File(dir, "offer.txt.tmp").renameTo(File(dir, "offer.txt"))
            // The person reads the code on the iPhone and types it here.
            val code = await(File(dir, "code.txt"))
            val added = android.completeLink(offering, code, null)
            assertEquals("Anna's iPhone", added.name)
            assertEquals("ios", added.platform)
            assertEquals(android.deviceId(), added.addedBy)
            await(File(dir, "swift-synced"))
            android.sync(null, null)
            assertEquals(
                listOf("from the Pixel", "from the iPhone"),
                android.messages("family").map { it.text }.sorted(),
            )
            val devices = android.devices().associateBy { it.name }
            assertEquals(setOf("Anna's Pixel", "Anna's iPhone"), devices.keys)
            assertTrue(devices.getValue("Anna's Pixel").isThisDevice)
            assertEquals(null, devices.getValue("Anna's Pixel").addedBy)
            assertEquals(android.deviceId(), devices.getValue("Anna's iPhone").addedBy)
            val report = android.verify()
            assertEquals(2UL, report.rosterEntries)
            assertEquals(0UL, report.rosterRefused)
            println("kotlin: linked ${added.deviceId} and synced with it")

            android.revoke(added.deviceId)
            val revoked = android.devices().first { it.deviceId == added.deviceId }
            assertTrue(revoked.revokedAtMs != null)
            android.record(listOf(Change.UpsertMessage(Message("family", "k2", "anna", 3, "after the revocation", null))))
            android.sync(null, null)
            File(dir, "revoked").writeText(added.deviceId)
            await(File(dir, "swift-refused"))
            android.sync(null, null)
            // The iPhone's write after its revocation is refused; nothing else is lost.
            assertEquals(
                listOf("after the revocation", "from the Pixel", "from the iPhone"),
                android.messages("family").map { it.text }.sorted(),
            )
            android.verify()
            println("kotlin: revoked ${added.deviceId}; its later writes are refused")
            android.close()
        } finally {
            state.deleteRecursively()
        }
    }
}
