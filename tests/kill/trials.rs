//! The kill trials, one function per phase: each adds data, SIGKILLs one command at a random
//! instant (or a random pause point), checks what the killed run acknowledged, runs it again to
//! completion, and checks that both devices (and now and then a new one) hold the model.

use std::time::Instant;

use super::model::{Line, difference, generate, write_lines};
use super::world::{DEVICES, KillAt, Landing, World, path_str};

/// The phases a kill lands in.
pub const PHASES: [&str; 5] = ["import", "push", "pull", "checkpoint", "gc"];

/// Runs `trials` trials from `seed`, the phases in a shuffled round-robin; returns the summary.
pub fn run(seed: u64, trials: usize, phases: &[&'static str]) -> String {
    let started = Instant::now();
    let mut world = World::new(seed);
    let mut order = Vec::new();
    while world.trial < trials {
        if order.is_empty() {
            order = phases.to_vec();
            for i in (1..order.len()).rev() {
                let j = world.rng.range(0, i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        world.trial += 1;
        world.phase = order.pop().unwrap();
        match world.phase {
            "import" => import(&mut world),
            "push" => push(&mut world),
            "pull" => pull(&mut world),
            "checkpoint" => checkpoint(&mut world),
            _ => gc(&mut world),
        }
    }
    world.summary(started.elapsed())
}

/// A device, the other one, and its tag.
fn devices(world: &mut World) -> (&'static str, &'static str, &'static str) {
    let first = world.rng.range(0, 2) as usize;
    let (device, tag) = DEVICES[first];
    (device, DEVICES[1 - first].0, tag)
}

/// New lines for `tag`'s chats, written to this trial's file.
fn new_lines(world: &mut World, tag: &str, low: u64, high: u64) -> (Vec<Line>, String) {
    let count = world.rng.range(low, high) as usize;
    let lines = generate(&mut world.rng, &world.model, tag, &mut world.next_id, count);
    let file = world.file(&format!("trial{}.jsonl", world.trial));
    write_lines(&file, &lines);
    (lines, path_str(&file).to_owned())
}

/// Recorded without interruption (syncing every `per_sync` lines; with `sync`, the rest too):
/// the data the other phases kill around. `checkpoint` and `gc` push what is left themselves.
fn add_data(
    world: &mut World,
    device: &str,
    tag: &str,
    range: (u64, u64),
    per_sync: u64,
    sync: bool,
) {
    let (lines, file) = new_lines(world, tag, range.0, range.1);
    let every = per_sync.to_string();
    world.run(
        device,
        &["import", &file, "--batch", &every, "--sync-every", &every],
    );
    if sync {
        world.run(device, &["sync"]);
    }
    for line in &lines {
        line.apply(&mut world.model);
    }
    world.snapshot("after new data was synced");
}

/// `import --progress` killed: the lines it reported recorded must be in the device's state,
/// which must be exactly the state before plus a prefix of whole batches (each batch is one
/// transaction). Then the import runs again whole.
fn import(world: &mut World) {
    let (device, _, tag) = devices(world);
    let (lines, file) = new_lines(world, tag, 40, 160);
    let batch = *world.rng.pick(&[10u64, 25, 50]);
    let sync_every = batch * world.rng.range(0, 3);
    let (batch_arg, sync_arg) = (batch.to_string(), sync_every.to_string());
    let args = [
        "import",
        &file,
        "--progress",
        "--batch",
        &batch_arg,
        "--sync-every",
        &sync_arg,
    ];
    let at = if world.rng.percent(25) {
        let batches = (lines.len() as u64).div_ceil(batch);
        KillAt::Pause(
            "CHATVAULT_TEST_PAUSE_AFTER_BATCH",
            world.rng.range(1, batches + 1),
        )
    } else {
        world.random_delay("import")
    };
    let killed = world.kill(device, &args, at);
    world.snapshot("after the kill");
    let acked = killed.acked("recorded", None, "lines") as usize;
    world.note_acked(&killed, acked as u64);
    if killed.landing == Landing::AfterExit && acked != lines.len() {
        world.fail(&format!(
            "a finished import acknowledged {acked} of {} lines",
            lines.len()
        ));
    }
    // The state after the kill (synced, so the push of what was recorded is tested too).
    let actual = world.export(device);
    world.snapshot("after the kill's state was synced");
    let batch = batch as usize;
    let candidates = [acked, (acked + batch).min(lines.len())];
    let mut differences = Vec::new();
    for recorded in candidates {
        let mut expected = world.model.clone();
        for line in &lines[..recorded] {
            line.apply(&mut expected);
        }
        match difference(&expected, &actual) {
            None => {
                differences.clear();
                break;
            }
            Some(d) => differences.push(format!("as if {recorded} lines were recorded: {d}")),
        }
    }
    if !differences.is_empty() {
        world.fail(&format!(
            "{device} after an import killed with {acked} lines acknowledged (batches of \
             {batch}) is not the state before plus whole batches: {}",
            differences.join(" / ")
        ));
    }
    world.run_timed(
        device,
        &[
            "import",
            &file,
            "--batch",
            &batch_arg,
            "--sync-every",
            &sync_arg,
        ],
        Some("import"),
    );
    for line in &lines {
        line.apply(&mut world.model);
    }
    world.converge(device);
}

/// `sync --progress` killed while it pushes (and pulls, and maybe writes a checkpoint): the
/// operations it reported uploaded have left the outbox. Then it runs again.
fn push(world: &mut World) {
    let (device, _, tag) = devices(world);
    let (lines, file) = new_lines(world, tag, 20, 120);
    world.run(device, &["import", &file, "--sync-every", "0"]);
    for line in &lines {
        line.apply(&mut world.model);
    }
    let at = world.random_delay("push");
    let killed = world.kill(device, &["sync", "--progress"], at);
    world.snapshot("after the kill");
    let acked = killed.acked("sync", Some("push"), "done");
    world.note_acked(&killed, acked);
    let stats: serde_json::Value =
        serde_json::from_str(world.run(device, &["stats", "--json"]).trim()).unwrap();
    let pending = stats["pending_operations"].as_u64().unwrap();
    if pending + acked > lines.len() as u64 {
        world.fail(&format!(
            "{pending} operations still pending after a push that acknowledged {acked} of {}",
            lines.len()
        ));
    }
    world.run_timed(device, &["sync"], Some("push"));
    world.converge(device);
}

/// A pull killed: by an existing device (`sync --progress`, at a random instant, or `restore`
/// at a random pause point after n segments), or by a new device restoring. Run again, the
/// existing device applies at most the segments the killed run had not: nothing twice.
fn pull(world: &mut World) {
    let (writer, reader, tag) = devices(world);
    // Small syncs: many segments to pull.
    let per_sync = *world.rng.pick(&[10u64, 20, 40]);
    add_data(world, writer, tag, (40, 160), per_sync, true);
    if world.rng.percent(25) {
        return pull_on_a_new_device(world);
    }
    let writer_id = world.device_ids[writer].clone();
    // Nothing applied yet when no trial has converged the reader (a pull as the first trial).
    let from = world
        .applied
        .get(reader)
        .and_then(|applied| applied.get(&writer_id))
        .copied()
        .unwrap_or(0);
    let to = world.newest_seqs().get(&writer_id).copied().unwrap_or(0);
    // Exactly `to - from` segments to apply, unless a checkpoint stands in for collected ones.
    let expected = (from + 1..=to)
        .all(|seq| world.segment_present(&writer_id, seq))
        .then_some(to - from);
    let (killed, acked) = if world.rng.percent(25) && to > from {
        let at = world.rng.range(1, to - from + 1);
        let killed = world.kill(
            reader,
            &["restore", "--out", "/dev/null"],
            KillAt::Pause("CHATVAULT_TEST_PAUSE_AFTER_SEGMENT", at),
        );
        let acked = if killed.landing == Landing::MidWork {
            at
        } else {
            to - from
        };
        (killed, acked)
    } else {
        let at = world.random_delay("pull");
        let killed = world.kill(reader, &["sync", "--progress"], at);
        let acked = killed.acked("sync", Some("pull"), "done");
        (killed, acked)
    };
    world.note_acked(&killed, acked);
    world.snapshot("after the kill");
    let report: serde_json::Value = serde_json::from_str(
        world
            .run_timed(reader, &["sync", "--json"], Some("pull"))
            .trim(),
    )
    .unwrap();
    let resumed = report["segments_applied"].as_u64().unwrap();
    if let Some(expected) = expected {
        // The kill may come after a segment was applied and before it was reported, and a
        // pull that starts from a checkpoint (when the segments it needs weigh more than the
        // checkpoint) applies fewer segments: only more than `expected` is a double application.
        // That nothing was skipped, the exports show.
        if resumed + acked > expected {
            world.fail(&format!(
                "{reader} had {expected} segments to apply; the killed pull acknowledged \
                 {acked} and the resumed one applied {resumed}"
            ));
        }
    }
    world.converge(reader);
}

/// A new device's first pull (`restore`, from the checkpoint if any) killed, then run again.
fn pull_on_a_new_device(world: &mut World) {
    world.fresh_devices += 1;
    let device = format!("fresh{}", world.fresh_devices);
    let at = if world.rng.percent(30) {
        KillAt::Pause("CHATVAULT_TEST_PAUSE_AFTER_SEGMENT", world.rng.range(1, 20))
    } else {
        world.random_delay("restore")
    };
    let killed = world.kill(&device, &["restore", "--out", "/dev/null"], at);
    world.note_acked(&killed, 0);
    world.snapshot("after the kill");
    let started = Instant::now();
    world.expect_model(&device, "(a new device) after a killed restore");
    world.note_typical("restore", started.elapsed().as_secs_f64());
    std::fs::remove_dir_all(world.root.join(&device)).unwrap();
    world.converge(DEVICES[0].0);
}

/// `checkpoint` killed (it pushes, then writes packs and an index), then run again.
fn checkpoint(world: &mut World) {
    let (device, _, tag) = devices(world);
    add_data(world, device, tag, (20, 100), 50, false);
    let at = world.random_delay("checkpoint");
    let killed = world.kill(device, &["checkpoint"], at);
    world.note_acked(&killed, 0);
    world.snapshot("after the kill");
    world.run_timed(device, &["checkpoint"], Some("checkpoint"));
    world.snapshot("after the checkpoint ran again");
    world.converge(device);
    if world.trial.is_multiple_of(3) {
        world.run(device, &["verify"]);
        world.fresh_restore();
    }
}

/// `gc --grace-hours 0` killed (it syncs, then deletes covered segments, older checkpoints and
/// their packs), after a checkpoint; then run again.
fn gc(world: &mut World) {
    let (device, _, tag) = devices(world);
    add_data(world, device, tag, (20, 100), 50, false);
    world.run(device, &["checkpoint"]);
    let at = world.random_delay("gc");
    let killed = world.kill(device, &["gc", "--grace-hours", "0"], at);
    world.note_acked(&killed, 0);
    world.snapshot("after the kill");
    world.run_timed(device, &["gc", "--grace-hours", "0"], Some("gc"));
    world.converge(device);
    if world.trial.is_multiple_of(3) {
        world.run(device, &["verify"]);
        world.fresh_restore();
    }
}
