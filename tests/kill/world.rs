//! The kill trials' world: one directory bucket, two devices (`phone`, `tablet`) and fresh
//! devices that come and go; running the CLI whole or SIGKILLing it; the bucket's write-once
//! ledger; and the expected state.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::model::{Rng, State, difference, parse_export};

/// The devices that record; each writes only its own chats (see `model::generate`).
pub const DEVICES: [(&str, &str); 2] = [("phone", "p"), ("tablet", "t")];

/// When to SIGKILL a run.
#[derive(Clone, Debug)]
pub enum KillAt {
    /// After this long, wherever the process is (possibly before it did anything, possibly
    /// after it finished).
    Delay(Duration),
    /// When it prints `paused` at the pause point `variable=n`.
    Pause(&'static str, u64),
}

/// Where a kill landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// The process was still running.
    MidWork,
    /// It had already finished (successfully) when the kill came.
    AfterExit,
}

pub struct Killed {
    pub landing: Landing,
    /// The `{"event":...}` lines it printed on stderr: its acknowledgements.
    pub events: Vec<serde_json::Value>,
}

impl Killed {
    /// The greatest value of `field` over events where `event` (and `phase`, if given) match.
    pub fn acked(&self, event: &str, phase: Option<&str>, field: &str) -> u64 {
        self.events
            .iter()
            .filter(|e| e["event"] == event && phase.is_none_or(|p| e["phase"] == p))
            .filter_map(|e| e[field].as_u64())
            .max()
            .unwrap_or(0)
    }
}

/// Figures per phase for the summary.
#[derive(Default, Debug)]
pub struct Tally {
    pub trials: u64,
    pub mid_work: u64,
    pub after_exit: u64,
    /// Mid-work kills that came after at least one acknowledged unit.
    pub after_an_ack: u64,
    pub at_pause_point: u64,
    /// Mid-work kills after the run had changed the bucket (written or deleted an object).
    pub changed_bucket: u64,
}

pub struct World {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub seed: u64,
    pub rng: Rng,
    pub trial: usize,
    pub phase: &'static str,
    /// What every device must hold once synced.
    pub model: State,
    pub next_id: u64,
    /// Every segment, checkpoint index and pack name ever seen in the bucket, with the hash of
    /// its bytes the first time: the same name with other bytes later is a re-sealed name.
    ledger: BTreeMap<String, [u8; 32]>,
    /// The name first seen at each (device, seq) of a segment.
    segment_places: BTreeMap<(String, u64), String>,
    pub device_ids: BTreeMap<&'static str, String>,
    /// Per device, per other device: the highest segment seq it had applied at its last full
    /// sync.
    pub applied: BTreeMap<String, BTreeMap<String, u64>>,
    /// Seconds an uninterrupted run of each kind takes (moving average), to aim the delays.
    typical: BTreeMap<&'static str, f64>,
    pub tally: BTreeMap<&'static str, Tally>,
    pub fresh_devices: u64,
    pub snapshots: u64,
}

impl World {
    pub fn new(seed: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut world = World {
            _dir: dir,
            root,
            seed,
            rng: Rng::new(seed),
            trial: 0,
            phase: "setup",
            model: State::default(),
            next_id: 0,
            ledger: BTreeMap::new(),
            segment_places: BTreeMap::new(),
            device_ids: BTreeMap::new(),
            applied: BTreeMap::new(),
            typical: BTreeMap::new(),
            tally: BTreeMap::new(),
            fresh_devices: 0,
            snapshots: 0,
        };
        let key = world.run("phone", &["keygen"]);
        std::fs::write(world.root.join("key.txt"), key).unwrap();
        for (device, _) in DEVICES {
            let out = world.run(device, &["init"]);
            let id = out
                .split("this device is ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| world.fail(&format!("init printed {out:?}")));
            world.device_ids.insert(device, id.to_owned());
        }
        world
    }

    /// Fails the test with everything needed to find and replay the trial.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "kill trial {} (phase {}, seed {}; replay with CHATVAULT_KILL_SEED={}): {what}",
            self.trial, self.phase, self.seed, self.seed
        )
    }

    pub fn command(&self, device: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatvault"));
        command
            .env(
                "CHATVAULT_STORE",
                format!("file://{}", self.root.join("bucket").display()),
            )
            .env("CHATVAULT_KEY_FILE", self.root.join("key.txt"))
            .env("CHATVAULT_STATE", self.root.join(device))
            .args(args);
        command
    }

    /// Runs a command to completion; it must succeed. Returns its stdout.
    pub fn run(&mut self, device: &str, args: &[&str]) -> String {
        self.run_timed(device, args, None)
    }

    /// Runs a command to completion and counts its duration into the typical duration of
    /// `kind`, which aims the delays of the kills of that kind.
    pub fn run_timed(&mut self, device: &str, args: &[&str], kind: Option<&'static str>) -> String {
        let started = Instant::now();
        let output = self.command(device, args).output().unwrap();
        if !output.status.success() {
            self.fail(&format!(
                "{device}: `chatvault {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if let Some(kind) = kind {
            self.note_typical(kind, started.elapsed().as_secs_f64());
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Counts an uninterrupted run of `kind` into its typical duration.
    pub fn note_typical(&mut self, kind: &'static str, seconds: f64) {
        let typical = self.typical.entry(kind).or_insert(seconds);
        *typical = 0.7 * *typical + 0.3 * seconds;
    }

    /// A random instant within a run of `kind`: up to 1.3 times its typical duration, so most
    /// kills land while it works and some after it finished.
    /// Half the kills are aimed at the second half of a run, where it writes to the bucket
    /// (startup, opening the state and listing come first).
    pub fn random_delay(&mut self, kind: &'static str) -> KillAt {
        let typical = self.typical.get(kind).copied().unwrap_or(0.5) * 1000.0;
        let (low, high) = if self.rng.percent(50) {
            (0.0, typical * 1.3)
        } else {
            (typical * 0.5, typical * 1.2)
        };
        KillAt::Delay(Duration::from_millis(
            self.rng
                .range(low as u64, (high as u64).max(low as u64 + 1)),
        ))
    }

    /// Every object in the bucket with its size (no contents): to see whether a killed run
    /// had changed the bucket.
    fn listing(&self) -> BTreeMap<PathBuf, u64> {
        let mut listing = BTreeMap::new();
        let mut stack = vec![self.root.join("bucket")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(metadata) = entry.metadata() {
                    listing.insert(path, metadata.len());
                }
            }
        }
        listing
    }

    /// Starts a command and SIGKILLs it at `at`. A run that fails by itself fails the test.
    pub fn kill(&mut self, device: &str, args: &[&str], at: KillAt) -> Killed {
        let before = self.listing();
        let mut command = self.command(device, args);
        if let KillAt::Pause(variable, n) = &at {
            command.env(variable, n.to_string());
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (paused_tx, paused_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line == "paused" {
                    let _ = paused_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut landing = Landing::MidWork;
        match &at {
            KillAt::Delay(delay) => std::thread::sleep(*delay),
            KillAt::Pause(..) => {
                // Either the pause point comes, or the run ends before reaching it.
                let _ = paused_rx.recv_timeout(Duration::from_secs(120));
            }
        }
        let status = match child.try_wait().unwrap() {
            Some(status) => {
                landing = Landing::AfterExit;
                status
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap()
            }
        };
        let lines = reader.join().unwrap();
        if landing == Landing::AfterExit || status.success() {
            landing = Landing::AfterExit;
            if !status.success() {
                self.fail(&format!(
                    "{device}: `chatvault {}` failed by itself: {lines:?}",
                    args.join(" ")
                ));
            }
        }
        let tally = self.tally.entry(self.phase).or_default();
        tally.trials += 1;
        match landing {
            Landing::MidWork => tally.mid_work += 1,
            Landing::AfterExit => tally.after_exit += 1,
        }
        if matches!(at, KillAt::Pause(..)) && landing == Landing::MidWork {
            tally.at_pause_point += 1;
        }
        if landing == Landing::MidWork && self.listing() != before {
            self.tally.entry(self.phase).or_default().changed_bucket += 1;
        }
        let events = lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Killed { landing, events }
    }

    pub fn note_acked(&mut self, killed: &Killed, acked: u64) {
        if killed.landing == Landing::MidWork && acked > 0 {
            self.tally.entry(self.phase).or_default().after_an_ack += 1;
        }
    }

    /// `device`'s export (`restore`, which syncs first), parsed.
    pub fn export(&mut self, device: &str) -> State {
        let out = self.root.join(format!("{device}.jsonl"));
        self.run(device, &["restore", "--out", out.to_str().unwrap()]);
        let text = std::fs::read_to_string(&out).unwrap();
        parse_export(&text).unwrap_or_else(|e| self.fail(&format!("{device}: {e}")))
    }

    /// `device` holds exactly the model (after syncing).
    pub fn expect_model(&mut self, device: &str, when: &str) {
        let actual = self.export(device);
        if let Some(difference) = difference(&self.model, &actual) {
            self.fail(&format!("{device} {when}: {difference}"));
        }
    }

    /// Both devices sync and hold the model; then each has applied everything listed.
    pub fn converge(&mut self, first: &str) {
        let second = DEVICES
            .iter()
            .map(|(d, _)| *d)
            .find(|d| *d != first)
            .unwrap();
        self.expect_model(first, "after recovery");
        self.expect_model(second, "after recovery");
        self.snapshot("after recovery");
        let newest = self.newest_seqs();
        for (device, _) in DEVICES {
            self.applied.insert(device.to_owned(), newest.clone());
        }
    }

    /// A new device restores the vault (from the checkpoint when there is one) and must hold
    /// the model; its state directory goes afterwards.
    pub fn fresh_restore(&mut self) {
        self.fresh_devices += 1;
        let device = format!("fresh{}", self.fresh_devices);
        self.expect_model(&device, "(a new device) after restoring");
        std::fs::remove_dir_all(self.root.join(&device)).unwrap();
    }

    /// Reads every segment, checkpoint index and pack in the bucket and checks each name's
    /// bytes against the first bytes ever seen under it.
    pub fn snapshot(&mut self, when: &str) {
        self.snapshots += 1;
        let bucket = self.root.join("bucket");
        let mut stack = vec![bucket.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path
                    .strip_prefix(&bucket)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let Some((_, key)) = name.split_once('/') else {
                    continue;
                };
                let tracked = ["segments/", "checkpoints/", "packs/"]
                    .iter()
                    .any(|p| key.starts_with(p));
                if !tracked || key.contains(".chatvault-tmp-") {
                    continue;
                }
                // A file deleted between listing and reading (none here: no process runs).
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                let hash: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                match self.ledger.get(key) {
                    None => {
                        // A retry after a kill must upload the staged segment under its own
                        // name: a second name at one sequence number of one device (no copy of
                        // a state directory runs here) would be a fork this device made itself.
                        if let Some(place) = segment_of(key)
                            && let Some(other) = self.segment_places.insert(place, key.to_owned())
                        {
                            self.fail(&format!(
                                "{key} {when} and {other}: two segments at one sequence number"
                            ));
                        }
                        self.ledger.insert(key.to_owned(), hash);
                    }
                    Some(first) if *first == hash => {}
                    Some(_) => self.fail(&format!(
                        "{key} {when} holds other bytes than when first seen: a name sealed twice"
                    )),
                }
            }
        }
    }

    /// Per device id, the highest segment seq ever seen in the bucket.
    pub fn newest_seqs(&self) -> BTreeMap<String, u64> {
        let mut newest = BTreeMap::new();
        for key in self.ledger.keys() {
            if let Some((device, seq)) = segment_of(key) {
                let entry = newest.entry(device).or_insert(0);
                *entry = (*entry).max(seq);
            }
        }
        newest
    }

    /// Whether segment `seq` of `device` is in the bucket now.
    pub fn segment_present(&self, device: &str, seq: u64) -> bool {
        let vaults = std::fs::read_dir(self.root.join("bucket")).unwrap();
        let start = format!("{seq:016x}-");
        vaults.flatten().any(|vault| {
            std::fs::read_dir(vault.path().join(format!("segments/{device}")))
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with(&start))
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn summary(&self, elapsed: Duration) -> String {
        let mut out = format!(
            "kill trials: seed {}, {} trials in {:.1} s, {} bucket snapshots, {} names in the \
             write-once ledger, {} fresh devices restored\n",
            self.seed,
            self.trial,
            elapsed.as_secs_f64(),
            self.snapshots,
            self.ledger.len(),
            self.fresh_devices
        );
        for (phase, t) in &self.tally {
            out.push_str(&format!(
                "  {phase:<10} {:>3} kills: {:>3} mid-work ({:>3} after the run had changed the \
                 bucket, {:>3} after an acknowledged unit, {:>3} at a pause point), {:>3} after \
                 the run had finished\n",
                t.trials,
                t.mid_work,
                t.changed_bucket,
                t.after_an_ack,
                t.at_pause_point,
                t.after_exit
            ));
        }
        out
    }
}

/// `segments/<device>/<seq>-<tag>-<parent>` → (device, seq).
fn segment_of(key: &str) -> Option<(String, u64)> {
    let name = chatvault::sync::segment::parse_segment_name(key)?;
    Some((name.device.to_hex(), name.seq))
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}
