// Step 2 of the cross-platform restore test (see bindings/swift/.../CrossPlatformTests.swift):
// an Android phone restores the iPhone's vault with only the recovery key, checks every chat and
// message, then adds and edits.
package org.chatvault

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.runBlocking
import org.junit.Assert.assertEquals
import org.junit.Test

class CrossPlatformTest {
    @Test
    fun step2KotlinRestoreAndAdd() = runBlocking {
        val key = RecoveryKey.parse(File(System.getenv("CHATVAULT_CROSS_KEY_FILE")).readText())
        val state = Files.createTempDirectory("chatvault-android").toFile()
        try {
            // It reads the restored messages from chatvault: the cache on before the first sync.
            val android = Vault.open(System.getenv("CHATVAULT_CROSS_STORE"), state.path, "Anna's Pixel", "android", key)
                .withContentCache()
            android.sync(null, null)
            // The iPhone and this phone are in the roster, both added with the recovery key.
            assertEquals(
                listOf("android/Anna's Pixel/true", "ios/Anna's iPhone/false"),
                android.devices().map { "${it.platform}/${it.name}/${it.isThisDevice}" }.sorted(),
            )
            assertEquals(android.deviceId(), android.devices().single { it.isThisDevice }.deviceId)
            assertEquals(listOf("climbing", "family"), android.chats().map { it.chat.chatId })
            assertEquals("Family 👪", android.chats()[1].chat.title)
            assertEquals(
                listOf(
                    "climbing/c1=Saturday?",
                    "family/f1=Dinner at 8? 🍝 (edited)",
                    "family/f2=Line one\nline \"two\"\ttab",
                ),
                android.messages(null).map { "${it.chatId}/${it.messageId}=${it.text}" },
            )
            android.record(listOf(
                Change.UpsertMessage(Message("climbing", "c1", "anna", 3, "Saturday? (edited on Android)", null)),
                Change.UpsertMessage(Message("climbing", "c3", "anna", 6, "Written on Android ✅", null)),
            ))
            assertEquals(1UL, android.sync(null, null).objectsUp)
            android.close()
        } finally {
            state.deleteRecursively()
        }
    }
}
