"""A small program using the binding that must exit cleanly: open a vault on a directory store,
record 2,000 messages, sync, exit. scripts/test-bindings.sh runs it 100 times.

It once aborted at interpreter exit now and then (glibc "FATAL: exception not rethrown",
SIGABRT): a tokio thread that had resumed an await through the continuation callback was still
inside it, waiting to take the GIL back, when the main thread finished and CPython began
finalizing and ended that thread with pthread_exit (see src/ffi/settle.rs). The window is a
callback thread descheduled between signalling the event loop and returning, which a loaded
machine makes likely; to open it on every run, the continuation callback here, on a thread other
than the main one, sleeps after signalling, as a descheduled thread would. With the fix, the
main thread's next poll waits for the callback to return, so the run exits cleanly however long
it sleeps.

Whether a continuation runs on a runtime thread at all depends on timing: when every file
operation happens to finish before its first poll, the whole run completes on the main thread.
So the program only reports how many did; scripts/test-bindings.sh requires that most of its 100
runs exercised the window."""
import asyncio
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.environ["CHATVAULT_PY_DIR"])
import chatvault as cv  # noqa: E402

MAIN = threading.get_ident()
off_main = []


def descheduled_continuation(future_ptr, poll_code):
    # The generated callback's body, then a pause when a runtime thread runs it.
    (eventloop, future) = cv._UniffiContinuationHandleMap.remove(future_ptr)
    eventloop.call_soon_threadsafe(cv._uniffi_set_future_result, future, poll_code)
    if threading.get_ident() != MAIN:
        off_main.append(poll_code)
        time.sleep(0.05)


cv._uniffi_continuation_callback = cv._UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK(descheduled_continuation)


async def main(directory):
    key = cv.RecoveryKey.generate()
    vault = await cv.Vault.open("file://" + directory + "/bucket", directory + "/state", "phone", "linux", key)
    vault.record([cv.Change.UPSERT_CHAT(cv.Chat(chat_id="c", title="t", members=["a"]))])
    vault.record([cv.Change.UPSERT_MESSAGE(cv.Message(
        chat_id="c", message_id=f"m{i}", sender="a", sent_at_ms=i, text=f"hello {i}", reply_to=None))
        for i in range(2000)])
    report = await vault.sync(None, None)
    assert report.operations_sent == 2001, report
    # A new device keeps no message content (the app's database is the source of truth), but
    # chats() still counts what was recorded.
    assert [(s.chat.chat_id, s.message_count) for s in vault.chats()] == [("c", 2000)], vault.chats()


with tempfile.TemporaryDirectory() as scratch:
    asyncio.run(main(scratch))
# Read by scripts/test-bindings.sh: a run without such a continuation did not exercise the window.
print(f"continuations from runtime threads: {len(off_main)}")
