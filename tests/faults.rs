//! Faults on the wire: the S3 store and three devices through a proxy in front of Garage that
//! injects, at a seeded random rate, 500/503 answers, answers lost after the write landed, 429
//! with `Retry-After: 1`, connections reset mid-body, bodies cut short of their
//! `content-length`, bodies cut with a rewritten matching `content-length`, slow bodies, and
//! listings that miss the most recently written key (`tests/common/fault_proxy.rs`).
//!
//! What must hold: the store retries what HTTP framing exposes (5xx, 429, resets, short bodies)
//! and returns the right bytes; what framing cannot expose (a cut body with a matching length, a
//! listing that lags) reaches the vault, which refuses it with a typed error and recovers at the
//! next sync; and three devices recording edits, deletes and chat deletions through random
//! faults for N rounds converge on exactly what was recorded, no message lost or duplicated.
//!
//! Rounds: `CHATVAULT_FAULT_ROUNDS` (default 30); seed `CHATVAULT_FAULT_SEED` (default: random,
//! printed); fault rate per request `CHATVAULT_FAULT_RATE` (default 0.2); `CHATVAULT_FAULT_TRACE=1`
//! prints what each round does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatvault::keys::RecoveryKey;
use chatvault::store::{ObjectStore, S3Config, S3Store, StoreError};
use chatvault::sync::{Change, Chat, Message};
use chatvault::vault::{DeviceInfo, Vault};
use chatvault::{DecodeProblem, Error, IntegrityProblem};

mod common;
// Only this test uses the proxy: included here rather than in every test's `common`.
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
use fault_proxy::{Counts, Fault, FaultProxy, Rng};

fn garage() -> (S3Config, SocketAddr) {
    let config = common::s3_server("GARAGE").expect("asked for the S3 tests");
    let upstream = config
        .endpoint
        .strip_prefix("http://")
        .expect("Garage is plain HTTP on loopback")
        .parse()
        .unwrap();
    (config, upstream)
}

fn through(proxy: &FaultProxy, endpoint: usize, garage: &S3Config) -> S3Config {
    let mut config = garage.clone();
    config.endpoint = proxy.endpoint(endpoint);
    config
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("CHATVAULT_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            u64::from_le_bytes(bytes)
        })
}

fn minus(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(kind, n)| (*kind, n - before.get(kind).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

// --- The store alone, one kind of fault at a time ---------------------------------------------

/// Objects of several sizes (one byte up to 40 KB), written and read back through the proxy.
fn objects() -> Vec<(String, Vec<u8>)> {
    [1usize, 2, 100, 5_000, 40_000]
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let body = (0..*len).map(|b| (b * 7 + i) as u8).collect();
            (format!("o/{i}"), body)
        })
        .collect()
}

/// Puts, gets, a ranged get, a listing and deletes through a proxy injecting only `kind`;
/// returns the proxy and the store after checking what every retried kind must give: the exact
/// bytes, and one extra request per fault injected before the answer was complete.
async fn exercise(kind: Fault, rate: f64, seed: u64) -> (FaultProxy, S3Store, Vec<String>) {
    let (garage, upstream) = garage();
    let proxy = FaultProxy::start(upstream, seed, rate, 1).await;
    proxy.set_kinds(&[kind]);
    let mut config = through(&proxy, 0, &garage);
    config.max_attempts = 12; // rate 0.5: every request gets through
    config.base_backoff = Duration::from_millis(10);
    let store = S3Store::new(config).unwrap();
    let mut problems = Vec::new();
    for (key, body) in objects() {
        store.put(&key, body).await.unwrap();
    }
    for (key, body) in objects() {
        let got = store.get(&key, u64::MAX).await.unwrap().unwrap();
        if got != body {
            problems.push(format!("get {key}: {} bytes of {}", got.len(), body.len()));
        }
        let range = 1..(body.len() as u64);
        let got = store.get_range(&key, range.clone()).await.unwrap().unwrap();
        if got[..] != body[1..] {
            problems.push(format!(
                "range {key}: {} bytes of {}",
                got.len(),
                body.len() - 1
            ));
        }
    }
    match store.list("o/").await {
        Ok(listed) if listed.len() == objects().len() => {}
        Ok(listed) => problems.push(format!("list: {} keys", listed.len())),
        Err(e) => problems.push(format!("list: {e}")),
    }
    for (key, _) in objects() {
        store.delete(&key).await.unwrap();
    }
    assert_eq!(store.requests_sent(), proxy.requests(), "{kind:?}");
    (proxy, store, problems)
}

/// The kinds HTTP framing exposes are retried by the store: the bytes come back exact, each
/// fault costs exactly one more request, and a 429's `Retry-After: 1` is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn the_store_retries_every_fault_framing_exposes() {
    let operations = (objects().len() * 4 + 1) as u64; // put, get, range, delete; one list page
    for (i, kind) in [
        Fault::ServerError,
        Fault::AnswerLost,
        Fault::Throttled,
        Fault::ResetMidBody,
        Fault::ShortBody,
        Fault::SlowBody,
    ]
    .into_iter()
    .enumerate()
    {
        let started = Instant::now();
        let (proxy, store, problems) = exercise(kind, 0.5, 1000 + i as u64).await;
        let elapsed = started.elapsed();
        let injected = proxy.counts().get(&kind).copied().unwrap_or(0);
        assert!(problems.is_empty(), "{kind:?}: {problems:?}");
        assert!(injected > 0, "{kind:?} was never injected");
        let retries = store.requests_sent() - operations;
        if kind == Fault::SlowBody {
            assert_eq!(retries, 0, "a slow body is not a failure");
        } else {
            assert_eq!(retries, injected, "{kind:?}: one retry per fault");
        }
        if kind == Fault::Throttled {
            assert!(
                elapsed >= Duration::from_secs(injected),
                "{injected} × Retry-After: 1 waited for in {elapsed:?}"
            );
        }
        println!("store: {injected} × {kind:?} survived ({retries} retries, {elapsed:.1?})");
    }
}

/// What framing cannot expose: a body cut with a content-length rewritten to match. The store
/// catches it where the answer says what it should hold (a ranged answer's `Content-Range`, a
/// listing's closing tag) and asks again, and never takes a cut listing for the bucket's; a whole
/// object comes back short, for the vault's authentication to refuse (see the run below). A
/// lagging listing misses the key written last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn what_framing_cannot_expose_reaches_the_caller_only_where_nothing_tells() {
    let (proxy, store, problems) = exercise(Fault::TruncatedMatchingLength, 0.5, 7).await;
    let injected = proxy.counts()[&Fault::TruncatedMatchingLength];
    println!("store: {injected} × TruncatedMatchingLength: {problems:?}");
    assert!(!problems.is_empty(), "no whole GET was cut");
    assert!(
        problems.iter().all(|p| p.starts_with("get ")),
        "only whole GETs come back cut: {problems:?}"
    );
    proxy.set_rate(0.0);
    for (key, body) in objects() {
        store.put(&key, body).await.unwrap();
    }
    proxy.set_rate(0.5);
    let cuts_before = proxy.counts()[&Fault::TruncatedMatchingLength];
    for _ in 0..40 {
        assert_eq!(store.list("o/").await.unwrap().len(), objects().len());
    }
    let cut_listings = proxy.counts()[&Fault::TruncatedMatchingLength] - cuts_before;
    assert!(cut_listings > 0);
    println!("store: {cut_listings} cut listings asked again");
    // Cut every time: the store gives up with a retryable error, never with part of a listing.
    proxy.set_rate(1.0);
    let error = store.list("o/").await.unwrap_err();
    assert!(matches!(error, StoreError::Busy(_)), "{error:?}");
    proxy.set_rate(0.0);
    for (key, _) in objects() {
        store.delete(&key).await.unwrap();
    }

    let (garage, upstream) = garage();
    let proxy = FaultProxy::start(upstream, 8, 1.0, 1).await;
    proxy.set_kinds(&[Fault::StaleListing]);
    let store = S3Store::new(through(&proxy, 0, &garage)).unwrap();
    for key in ["a", "b", "c"] {
        store.put(key, vec![1]).await.unwrap();
    }
    let listed: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, ["a", "b"], "the key written last is missing");
    assert_eq!(proxy.counts()[&Fault::StaleListing], 1);
    proxy.set_rate(0.0);
    assert_eq!(store.list("").await.unwrap().len(), 3);
}

// --- Three devices through random faults --------------------------------------------------------

/// What the devices recorded, in recording order (one writer per round, rounds milliseconds
/// apart, so recording order is stamp order and last writer wins as here).
#[derive(Default)]
struct Model {
    /// Live messages: (chat, id) → (text, sent_at_ms).
    messages: BTreeMap<(String, String), (String, i64)>,
    /// Live chats and their titles.
    chats: BTreeMap<String, String>,
    next_id: u64,
    /// Per chat slot, how many times its chat was deleted: a deleted chat's id is never used
    /// again. (Reviving one is a known bug outside this test's subject: its writer keeps the
    /// old chat key, whose grant no checkpoint carries, and a device starting from a later
    /// checkpoint fails with `UnknownKey`.)
    generations: [u64; CHATS as usize],
}

const CHATS: u64 = 5;

impl Model {
    /// One device's batch: new messages, edits and deletions of live messages, now and then a
    /// chat deletion; never two changes to one message in a batch.
    fn batch(&mut self, rng: &mut Rng, round: usize) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut touched = BTreeSet::new();
        for _ in 0..1 + rng.below(6) {
            let roll = rng.below(100);
            let live: Vec<(String, String)> = self
                .messages
                .keys()
                .filter(|k| {
                    !touched.contains(&k.0) && !touched.contains(&format!("{}/{}", k.0, k.1))
                })
                .cloned()
                .collect();
            if roll < 65 || live.is_empty() {
                let slot = rng.below(CHATS) as usize;
                let chat = format!("chat{slot}.{}", self.generations[slot]);
                if touched.contains(&chat) {
                    continue;
                }
                self.next_id += 1;
                let id = format!("m{}", self.next_id);
                let title = format!("{chat} as of round {round}");
                let text = format!("message {id}, round {round} ✓");
                let at = self.next_id as i64 * 1000;
                changes.push(Change::UpsertChat(Chat {
                    chat_id: chat.clone(),
                    title: title.clone(),
                    members: vec!["me".into(), "you".into()],
                    payload: Vec::new(),
                }));
                changes.push(message(&chat, &id, &text, at));
                touched.insert(format!("{chat}/{id}"));
                self.chats.insert(chat.clone(), title);
                self.messages.insert((chat, id), (text, at));
                continue;
            }
            let (chat, id) = live[rng.below(live.len() as u64) as usize].clone();
            touched.insert(format!("{chat}/{id}"));
            if roll < 85 {
                let at = self.messages[&(chat.clone(), id.clone())].1;
                let text = format!("message {id} edited in round {round}");
                changes.push(message(&chat, &id, &text, at));
                self.messages.insert((chat, id), (text, at));
            } else if roll < 99 {
                changes.push(Change::DeleteMessage {
                    chat_id: chat.clone(),
                    message_id: id.clone(),
                });
                self.messages.remove(&(chat, id));
            } else {
                changes.push(Change::DeleteChat {
                    chat_id: chat.clone(),
                });
                self.messages.retain(|(c, _), _| *c != chat);
                self.chats.remove(&chat);
                if let Some(slot) = chat
                    .strip_prefix("chat")
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|slot| slot.parse::<usize>().ok())
                {
                    self.generations[slot] += 1;
                }
                touched.insert(chat);
            }
        }
        changes
    }

    /// Fails unless `vault` holds exactly the live messages and chats, each message once.
    fn check(&self, vault: &Vault, who: &str) {
        let messages = vault.messages(None).unwrap();
        let held: BTreeMap<(String, String), (String, i64)> = messages
            .iter()
            .map(|m| {
                (
                    (m.chat_id.clone(), m.message_id.clone()),
                    (m.text.clone(), m.sent_at_ms),
                )
            })
            .collect();
        assert_eq!(messages.len(), held.len(), "{who}: a message held twice");
        let lost: Vec<_> = self
            .messages
            .keys()
            .filter(|k| !held.contains_key(*k))
            .collect();
        let extra: Vec<_> = held
            .keys()
            .filter(|k| !self.messages.contains_key(*k))
            .collect();
        assert!(
            lost.is_empty() && extra.is_empty(),
            "{who}: lost {lost:?}, not deleted {extra:?}"
        );
        assert_eq!(held, self.messages, "{who}: an edit not applied");
        let chats: BTreeMap<String, (String, u64)> = vault
            .chats()
            .unwrap()
            .into_iter()
            .map(|c| (c.chat.chat_id, (c.chat.title, c.message_count)))
            .collect();
        let expected: BTreeMap<String, (String, u64)> = self
            .chats
            .iter()
            .map(|(chat, title)| {
                let count = self.messages.keys().filter(|(c, _)| c == chat).count() as u64;
                (chat.clone(), (title.clone(), count))
            })
            .collect();
        assert_eq!(chats, expected, "{who}: chats");
    }
}

fn message(chat: &str, id: &str, text: &str, at: i64) -> Change {
    Change::UpsertMessage(Message {
        chat_id: chat.into(),
        message_id: id.into(),
        sender: "me".into(),
        sent_at_ms: at,
        text: text.into(),
        kind: "text".into(),
        payload: id.bytes().collect(),
        ..Message::default()
    })
}

/// Why an operation may fail under the faults injected while it ran (on its device's endpoint),
/// or `None` if nothing injected explains `error`: then the test fails.
///
/// - The store gives up (`Busy`/`Unavailable`) only after its attempts all met retried faults.
/// - A whole object cut with a matching length is refused by authentication (`Decode`), by a
///   block's range outside its pack (`Misplaced`) or by size checks (`WrongSize`). (Cut ranges
///   and listings are asked again by the store.)
/// - A listing that misses the newest segment looks like a rollback (`RolledBack`) to a device
///   that applied it, or makes a later segment's claim unprovable (`MissingSegment`): a store
///   that lags cannot be told from one that withholds, so the sync refuses and applies nothing,
///   and the next sync, with a complete listing, goes on.
fn explained(error: &Error, faults: &Counts) -> Option<&'static str> {
    let had = |kind: Fault| faults.get(&kind).is_some_and(|n| *n > 0);
    let cut = had(Fault::TruncatedMatchingLength);
    let lagging = had(Fault::StaleListing);
    let retried = [
        Fault::TruncatedMatchingLength,
        Fault::ServerError,
        Fault::AnswerLost,
        Fault::Throttled,
        Fault::ResetMidBody,
        Fault::ShortBody,
    ]
    .into_iter()
    .any(had);
    match error {
        Error::Store(StoreError::Busy(_) | StoreError::Unavailable(_)) if retried => {
            Some("store gave up after its retries")
        }
        Error::Decode { problem, .. } if cut => Some(match problem {
            DecodeProblem::AuthenticationFailed => "cut body: authentication failed",
            _ => "cut body: does not decode",
        }),
        Error::Integrity(
            IntegrityProblem::Misplaced { .. } | IntegrityProblem::WrongSize { .. },
        ) if cut => Some("cut body: wrong size"),
        Error::Integrity(IntegrityProblem::RolledBack { .. }) if lagging => {
            Some("lagging listing: looks rolled back")
        }
        Error::Integrity(
            IntegrityProblem::MissingSegment { .. } | IntegrityProblem::MissingObject { .. },
        ) if lagging => Some("lagging listing: a segment seems missing"),
        _ => None,
    }
}

/// Tallies of a run.
#[derive(Default)]
struct Tally {
    syncs: u64,
    checkpoints: u64,
    collections: u64,
    /// Failed operations by why.
    failed: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Notes the outcome of one operation of device `d`; fails the test on an unexplained error.
    fn note<T>(&mut self, outcome: chatvault::Result<T>, faults: &Counts, what: &str, d: usize) {
        if let Err(error) = outcome {
            let Some(why) = explained(&error, faults) else {
                panic!(
                    "device {d}: {what} failed with {error:?}, unexplained by the faults {faults:?}"
                );
            };
            *self.failed.entry(why).or_default() += 1;
        }
    }
}

/// Three devices, each through its own endpoint of one fault proxy, for N rounds: a random
/// device records a batch, then either one device checkpoints or syncs and collects garbage with
/// no grace period (alone), or a random subset syncs concurrently. Every failure must be explained by a
/// fault injected into it. Then, faults off, every device syncs until quiet and all three, and a
/// fresh fourth device, hold exactly what was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
#[ignore = "S3: needs scripts/s3-servers.sh, run with --include-ignored"]
async fn three_devices_converge_through_random_faults() {
    let rounds: usize = env_or("CHATVAULT_FAULT_ROUNDS", 30);
    let rate: f64 = env_or("CHATVAULT_FAULT_RATE", 0.2);
    let seed = seed();
    println!("faults: {rounds} rounds, rate {rate}, seed {seed} (CHATVAULT_FAULT_SEED)");
    let started = Instant::now();
    let (garage, upstream) = garage();
    let proxy = FaultProxy::start(upstream, seed, rate, 4).await;
    let key = RecoveryKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = |d: usize| {
        let store: Arc<dyn ObjectStore> =
            Arc::new(S3Store::new(through(&proxy, d, &garage)).unwrap());
        let path = dir.path().join(format!("device{d}"));
        let key = key.clone();
        async move {
            let info = DeviceInfo {
                name: format!("device {d}"),
                platform: "test".into(),
            };
            // A new state directory reads the bucket (a redirect) when it opens: through the
            // faults that may take more than one attempt, as a sync may.
            let mut attempts = 0;
            loop {
                match Vault::open(store.clone(), &path, info.clone(), &key).await {
                    Ok(vault) => break common::cached(vault),
                    Err(Error::Store(error)) if error.is_retryable() && attempts < 20 => {
                        attempts += 1;
                    }
                    Err(error) => panic!("device {d} does not open: {error}"),
                }
            }
        }
    };
    let devices = [open(0).await, open(1).await, open(2).await];
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut model = Model::default();
    let mut tally = Tally::default();
    let trace = std::env::var("CHATVAULT_FAULT_TRACE").is_ok();
    for round in 0..rounds {
        let writer = rng.below(3) as usize;
        let batch = model.batch(&mut rng, round);
        if trace {
            let summary: Vec<String> = batch
                .iter()
                .map(|c| match c {
                    Change::UpsertChat(chat) => format!("chat {}", chat.chat_id),
                    Change::UpsertMessage(m) => format!("msg {}/{}", m.chat_id, m.message_id),
                    Change::DeleteMessage {
                        chat_id,
                        message_id,
                    } => {
                        format!("del {chat_id}/{message_id}")
                    }
                    Change::DeleteChat { chat_id } => format!("DELETE CHAT {chat_id}"),
                })
                .collect();
            println!("round {round}: device {writer} records {summary:?}");
        }
        devices[writer].record(batch).unwrap();
        // The next round's stamps are in a later millisecond than this round's.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let roll = rng.below(100);
        if roll < 12 {
            let d = rng.below(3) as usize;
            let before = proxy.counts_of(d);
            if trace {
                println!(
                    "round {round}: device {d} {}",
                    if roll < 4 { "gc" } else { "checkpoint" }
                );
            }
            if roll < 4 {
                // As documented, a device syncs before it collects garbage. (Collecting on a
                // device behind a checkpoint whose segments were collected fails with
                // MissingSegment: a known bug outside this test's subject.)
                tally.syncs += 1;
                let synced = devices[d].sync(None, None).await;
                let ok = synced.is_ok();
                tally.note(synced, &minus(&proxy.counts_of(d), &before), "sync", d);
                if ok {
                    let before = proxy.counts_of(d);
                    tally.collections += 1;
                    let outcome = devices[d].collect_garbage(0).await;
                    tally.note(outcome, &minus(&proxy.counts_of(d), &before), "gc", d);
                }
            } else {
                tally.checkpoints += 1;
                let outcome = devices[d].checkpoint().await;
                tally.note(
                    outcome,
                    &minus(&proxy.counts_of(d), &before),
                    "checkpoint",
                    d,
                );
            }
            continue;
        }
        let subset: Vec<usize> = loop {
            let mask = rng.below(8);
            if mask != 0 {
                break (0..3).filter(|d| mask & (1 << d) != 0).collect();
            }
        };
        if trace {
            println!("round {round}: {subset:?} sync");
        }
        let before: Vec<Counts> = subset.iter().map(|d| proxy.counts_of(*d)).collect();
        let outcomes =
            futures_util::future::join_all(subset.iter().map(|d| devices[*d].sync(None, None)))
                .await;
        for ((d, outcome), before) in subset.iter().zip(outcomes).zip(before) {
            tally.syncs += 1;
            tally.note(outcome, &minus(&proxy.counts_of(*d), &before), "sync", *d);
        }
    }
    let injected = proxy.counts();
    let faulted_requests = proxy.requests();

    proxy.set_rate(0.0);
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes <= 6, "the devices do not settle");
        let mut quiet = true;
        for vault in &devices {
            let report = vault.sync(None, None).await.unwrap();
            quiet &= report.operations_sent == 0 && report.segments_applied == 0;
        }
        if quiet {
            break;
        }
    }
    for (d, vault) in devices.iter().enumerate() {
        model.check(vault, &format!("device {d}"));
    }
    let fresh = open(3).await;
    fresh.sync(None, None).await.unwrap();
    model.check(&fresh, "a fresh device");
    fresh.verify().await.unwrap();

    let total: u64 = injected.values().sum();
    let failed: u64 = tally.failed.values().sum();
    println!(
        "faults: {total} injected into {faulted_requests} requests and survived: {injected:?}"
    );
    println!(
        "faults: {} syncs, {} checkpoints, {} collections; {failed} failed and were retried by a \
         later operation: {:?}",
        tally.syncs, tally.checkpoints, tally.collections, tally.failed
    );
    println!(
        "faults: {} live messages in {} chats on every device ({passes} quiet passes), {:.1?}",
        model.messages.len(),
        model.chats.len(),
        started.elapsed()
    );
    assert!(total > 0, "no fault was injected");
}
