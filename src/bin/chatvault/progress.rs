//! Progress lines on stderr and the kill tests' pause points: what the CLI reports as done is
//! durable, so `tests/kill.rs` reads these lines as acknowledgements.

use std::path::Path;

use chatvault::attachment::{TransferListener, TransferReport};

/// A pause point for the kill tests: with `VARIABLE=n` set, the command prints `paused` on
/// stderr once it has finished its n-th unit (import batch, or pulled segment) and waits there
/// to be killed, so a test kills it at a known point instead of racing it. With
/// `CHATVAULT_TEST_PAUSE_AFTER_BYTES=n`, an attachment upload or download pauses the first time
/// its progress reaches n bytes of the file: after a completed chunk, with nothing in flight.
/// With `CHATVAULT_TEST_PAUSE_RESUME=stdin` as well, an import or restore pause point waits for
/// a line on stdin and then carries on (the lock test holds a state directory open this way
/// while a second process tries it).
pub(crate) struct TestPause {
    at: u64,
    resume_on_stdin: bool,
}

pub(crate) fn test_pause(variable: &str) -> Option<TestPause> {
    let at = std::env::var(variable).ok()?.parse().ok()?;
    let resume_on_stdin = std::env::var("CHATVAULT_TEST_PAUSE_RESUME").is_ok_and(|v| v == "stdin");
    Some(TestPause {
        at,
        resume_on_stdin,
    })
}

impl TestPause {
    pub(crate) fn reached(&self, done: u64) {
        if done != self.at {
            return;
        }
        if !self.resume_on_stdin {
            Self::wait_to_be_killed();
        }
        eprintln!("paused");
        let mut line = String::new();
        // Any line, or the end of stdin, resumes.
        let _ = std::io::stdin().read_line(&mut line);
    }

    fn wait_to_be_killed() -> ! {
        eprintln!("paused");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

impl chatvault::vault::SyncProgress for TestPause {
    fn on_progress(&self, phase: chatvault::vault::SyncPhase, done: u64, _total: u64) {
        if phase == chatvault::vault::SyncPhase::Pull {
            self.reached(done);
        }
    }
}

/// Prints `{"event":"progress",...}` lines on stderr when asked to, at most one per percent.
/// Also the transfers' test pause point (`CHATVAULT_TEST_PAUSE_AFTER_BYTES`, see [`TestPause`]).
pub(crate) struct ProgressPrinter {
    enabled: bool,
    file: String,
    last_percent: std::sync::atomic::AtomicU64,
    pause: Option<TestPause>,
}

impl ProgressPrinter {
    pub(crate) fn new(enabled: bool, file: &Path) -> Self {
        ProgressPrinter {
            enabled,
            file: file.display().to_string(),
            last_percent: std::sync::atomic::AtomicU64::new(u64::MAX),
            pause: test_pause("CHATVAULT_TEST_PAUSE_AFTER_BYTES"),
        }
    }

    pub(crate) fn as_listener(&self) -> Option<&dyn TransferListener> {
        (self.enabled || self.pause.is_some()).then_some(self as &dyn TransferListener)
    }
}

impl TransferListener for ProgressPrinter {
    fn on_progress(&self, done: u64, total: u64) {
        let percent = (done.saturating_mul(100)).checked_div(total).unwrap_or(100);
        if self.enabled
            && self
                .last_percent
                .swap(percent, std::sync::atomic::Ordering::Relaxed)
                != percent
        {
            eprintln!(
                "{}",
                serde_json::json!({"event": "progress", "file": self.file, "done": done, "total": total})
            );
        }
        if let Some(pause) = &self.pause
            && done >= pause.at
        {
            eprintln!(
                "{}",
                serde_json::json!({"event": "pausing", "file": self.file, "done": done, "total": total})
            );
            TestPause::wait_to_be_killed();
        }
    }
}

/// One `{"event":...}` line on stderr, when progress was asked for. The kill trials
/// (`tests/kill.rs`) read these as acknowledgements: what a line reports is durable.
pub(crate) fn print_event(enabled: bool, event: serde_json::Value) {
    if enabled {
        eprintln!("{event}");
    }
}

/// `sync --progress`: a line per unit made durable (operations whose segment is uploaded and
/// recorded as this device's head; segments applied), for the kill trials' acknowledgements.
pub(crate) struct SyncPrinter;

impl chatvault::vault::SyncProgress for SyncPrinter {
    fn on_progress(&self, phase: chatvault::vault::SyncPhase, done: u64, total: u64) {
        let phase = match phase {
            chatvault::vault::SyncPhase::Push => "push",
            chatvault::vault::SyncPhase::List => return,
            chatvault::vault::SyncPhase::Pull => "pull",
        };
        print_event(
            true,
            serde_json::json!({"event": "sync", "phase": phase, "done": done, "total": total}),
        );
    }
}

pub(crate) fn add_report(totals: &mut TransferReport, report: &TransferReport) {
    totals.bytes_transferred += report.bytes_transferred;
    totals.chunks_transferred += report.chunks_transferred;
    totals.chunks_skipped += report.chunks_skipped;
    totals.requests += report.requests;
}

/// The final `{"event":"transfers",...}` line, with this process's peak memory where the OS
/// tells it (Linux: VmHWM).
pub(crate) fn print_transfer_summary(enabled: bool, totals: &TransferReport) {
    if !enabled {
        return;
    }
    let peak_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    eprintln!(
        "{}",
        serde_json::json!({
            "event": "transfers",
            "bytes_transferred": totals.bytes_transferred,
            "chunks_transferred": totals.chunks_transferred,
            "chunks_skipped": totals.chunks_skipped,
            "requests": totals.requests,
            "peak_rss_kib": peak_rss_kib,
        })
    );
}
