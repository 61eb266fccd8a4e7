#!/usr/bin/env python3
"""Helper of scripts/bench-vs-restic.sh (standard library only).

  bench_vs_restic.py corpus --messages N --out DIR
      A deterministic chat history of N messages in 200 chats, written twice: DIR/corpus.jsonl
      (chatvault JSON Lines: chat lines, then message lines in time order) and DIR/app.db (the
      app's own SQLite database: chats, messages, an index on (chat_id, sent_at_ms), WAL
      checkpointed into the one file). Also DIR/inc-1.jsonl .. inc-3.jsonl: three increments of
      1,000 new messages spread over 20 existing chats each, and DIR/meta.json.
  bench_vs_restic.py increment --db app.db --jsonl inc-K.jsonl
      Inserts an increment's messages into the app database, as the app would, and checkpoints.
  bench_vs_restic.py table --dir WORKDIR
      Prints the markdown tables from the measurements the shell script left in WORKDIR.

Messages are 3-18 words from the word list of examples/bench_sync.rs, drawn with the same LCG.
"""

import argparse
import json
import os
import re
import sqlite3
import sys

CORPUS_VERSION = "v1"
CHATS = 200
ONE_TO_ONE = 150  # chats 0..149 have two members, the rest are groups of 3-8
INCREMENTS = 3
INCREMENT_MESSAGES = 1000
INCREMENT_CHATS = 20
START_MS = 1_600_000_000_000
STEP_MS = 60_000  # one message a minute on average: 1M messages span about two years
WORDS = [
    "ok", "see", "you", "tomorrow", "at", "the", "station", "dinner", "tonight", "?", "love",
    "it", "haha", "send", "me", "photos", "when", "are", "we", "meeting", "running", "late",
    "sorry", "great", "news", "call", "later", "\U0001f642", "\U0001f44d", "\U0001f389",
]
MASK = (1 << 64) - 1


class Lcg:
    """The generator of examples/bench_sync.rs."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK
        return self.state


def chat_id(c):
    return f"chat-{c:04d}"


def chat_members(c):
    if c < ONE_TO_ONE:
        return ["me", f"contact{c:03d}"]
    return ["me"] + [f"contact{(c * 7 + i) % 500:03d}" for i in range(2 + c % 7)]


def chat_title(c):
    return f"Chat {c}" if c < ONE_TO_ONE else f"Group {c}"


def generate(rng, first_index, count, pick_chat, last_in_chat):
    """Yields message rows (chat, message_id, sender, sent_at_ms, text, reply_to) in time order."""
    words_n = len(WORDS)
    for index in range(first_index, first_index + count):
        c = pick_chat(rng.next())
        r = rng.next()
        words = 3 + (r >> 60)
        text = []
        for _ in range(words):
            r = rng.next()
            text.append(WORDS[(r >> 33) % words_n])
        members = chat_members(c)
        sender = members[(r >> 20) % len(members)]
        r = rng.next()
        reply_to = last_in_chat.get(c) if (r >> 40) % 20 == 0 else None
        message_id = f"m{index:08d}"
        last_in_chat[c] = message_id
        yield (chat_id(c), message_id, sender, START_MS + index * STEP_MS, " ".join(text), reply_to)


def message_line(row):
    chat, message_id, sender, sent_at_ms, text, reply_to = row
    return json.dumps(
        {
            "type": "message",
            "chat_id": chat,
            "message_id": message_id,
            "sender": sender,
            "sent_at_ms": sent_at_ms,
            "text": text,
            "reply_to": reply_to,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def create_schema(db):
    db.executescript(
        """
        CREATE TABLE chats(id TEXT PRIMARY KEY, title TEXT NOT NULL, members TEXT NOT NULL);
        CREATE TABLE messages(
            chat_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            sent_at_ms INTEGER NOT NULL,
            text TEXT NOT NULL,
            reply_to TEXT
        );
        CREATE INDEX messages_by_chat_time ON messages(chat_id, sent_at_ms);
        """
    )


def insert_messages(db, rows):
    db.executemany(
        "INSERT INTO messages(chat_id, message_id, sender, sent_at_ms, text, reply_to) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def checkpoint(db):
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        sys.exit("bench_vs_restic.py: the WAL checkpoint did not complete")


def cmd_corpus(args):
    n = args.messages
    out = args.out
    os.makedirs(out, exist_ok=True)
    db_path = os.path.join(out, "app.db")
    for stale in (db_path, db_path + "-wal", db_path + "-shm"):
        if os.path.exists(stale):
            os.remove(stale)
    db = sqlite3.connect(db_path)
    # An app's database: WAL journal, the index maintained as messages arrive (not built
    # afterwards), so its pages are as full as an app's would be.
    db.execute("PRAGMA journal_mode=WAL")
    create_schema(db)
    with open(os.path.join(out, "corpus.jsonl"), "w", encoding="utf-8") as jsonl:
        for c in range(CHATS):
            members = chat_members(c)
            jsonl.write(
                json.dumps(
                    {"type": "chat", "chat_id": chat_id(c), "title": chat_title(c),
                     "members": members},
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
                + "\n"
            )
            db.execute(
                "INSERT INTO chats(id, title, members) VALUES (?, ?, ?)",
                (chat_id(c), chat_title(c), json.dumps(members)),
            )
        db.commit()
        rng = Lcg(1)
        last_in_chat = {}
        done = 0
        while done < n:
            count = min(10_000, n - done)
            rows = list(generate(rng, done, count, lambda r: (r >> 33) % CHATS, last_in_chat))
            jsonl.write("".join(message_line(row) + "\n" for row in rows))
            insert_messages(db, rows)
            db.commit()  # an app commits as messages arrive
            done += count
    checkpoint(db)
    db.close()

    # Increments: new messages after the corpus, each set in 20 existing chats.
    for k in range(1, INCREMENTS + 1):
        chats = [(k * 41 + j * 10) % CHATS for j in range(INCREMENT_CHATS)]
        rng = Lcg(1000 + k)
        first = n + (k - 1) * INCREMENT_MESSAGES
        rows = generate(
            rng, first, INCREMENT_MESSAGES, lambda r: chats[(r >> 33) % INCREMENT_CHATS], {}
        )
        with open(os.path.join(out, f"inc-{k}.jsonl"), "w", encoding="utf-8") as f:
            f.write("".join(message_line(row) + "\n" for row in rows))

    meta = {
        "version": CORPUS_VERSION,
        "messages": n,
        "chats": CHATS,
        "corpus_jsonl_bytes": os.path.getsize(os.path.join(out, "corpus.jsonl")),
        "app_db_bytes": os.path.getsize(db_path),
    }
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.write("\n")


def cmd_increment(args):
    rows = []
    with open(args.jsonl, encoding="utf-8") as f:
        for line in f:
            m = json.loads(line)
            rows.append(
                (m["chat_id"], m["message_id"], m["sender"], m["sent_at_ms"], m["text"],
                 m["reply_to"])
            )
    db = sqlite3.connect(args.db)
    db.execute("PRAGMA journal_mode=WAL")
    # Messages arrive one by one in an app; a transaction per message.
    for row in rows:
        insert_messages(db, [row])
        db.commit()
    checkpoint(db)
    db.close()


# ---------------------------------------------------------------------------------------------
# Table


def read_time(path):
    """Wall seconds and peak RSS (KiB) from a GNU `time -v` report."""
    wall = rss = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("Elapsed (wall clock) time"):
                value = line.rsplit(": ", 1)[1]
                seconds = 0.0
                for part in value.split(":"):
                    seconds = seconds * 60 + float(part)
                wall = seconds
            elif line.startswith("Maximum resident set size"):
                rss = int(line.rsplit(": ", 1)[1])
    if wall is None or rss is None:
        sys.exit(f"bench_vs_restic.py: no wall time or peak RSS in {path}")
    return wall, rss


def last_json(path):
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip().startswith("{")]
    if not lines:
        sys.exit(f"bench_vs_restic.py: no JSON line in {path}")
    return json.loads(lines[-1])


def cmd_table(args):
    d = args.dir
    steps = {}
    for name in sorted(os.listdir(os.path.join(d, "t"))):
        if name.endswith(".time"):
            steps[name[: -len(".time")]] = read_time(os.path.join(d, "t", name))
    values = {}
    with open(os.path.join(d, "results"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                key, value = line.split(None, 1)
                values[key] = value.strip()

    def wall(step):
        return steps[step][0]

    def rss(step):
        return steps[step][1] / 1024.0  # MiB

    def num(key):
        return float(values[key])

    api_backup = last_json(os.path.join(d, "t", "api.backup.out"))
    api_restore = last_json(os.path.join(d, "t", "api.restore.out"))
    api_amortized = last_json(os.path.join(d, "t", "api.amortized.out"))
    incs = sorted(
        {int(m.group(1)) for s in steps for m in [re.match(r"restic\.inc(\d+)$", s)] if m}
    )

    mib = 1048576.0
    rows = []

    def size(b):
        return f"{b / mib:.1f} MiB" if b >= mib else f"{b / 1024:.1f} KiB"

    def row(what, ours, theirs, ours_text, theirs_text, goal=None, goal_text="", absolute=None):
        """goal: ratio goal (ours/theirs <= goal); absolute: (value, limit) checked instead."""
        ratio = ours / theirs if theirs else float("nan")
        if absolute is not None:
            met = absolute[0] <= absolute[1]
        elif goal is not None:
            met = ratio <= goal
        else:
            met = None
        rows.append(
            (
                what,
                ours_text,
                theirs_text,
                f"{ratio:.2f}x" if theirs else "-",
                goal_text,
                "" if met is None else ("yes" if met else "**no**"),
            )
        )

    cli_backup = wall("cv.import") + wall("cv.sync")
    api_backup_s = api_backup["record_s"] + api_backup["sync_s"]
    restic_backup = wall("restic.backup")
    row(
        "Full backup wall, CLI (import + sync)",
        cli_backup,
        restic_backup,
        f"{cli_backup:.1f} s ({wall('cv.import'):.1f} + {wall('cv.sync'):.1f})",
        f"{restic_backup:.1f} s",
        1.0,
        "<= 1.0x",
    )
    row(
        "Full backup, Rust API (record + sync)",
        api_backup_s,
        restic_backup,
        f"{api_backup_s:.1f} s ({api_backup['record_s']:.1f} + {api_backup['sync_s']:.1f}; "
        f"{api_backup['record_us_per_message']:.1f} us/msg)",
        f"{restic_backup:.1f} s",
        0.5,
        "<= 0.5x",
    )
    cli_restore = wall("cv.restore.sync") + wall("cv.restore.out")
    restic_restore = wall("restic.restore")
    row(
        "Fresh restore wall, CLI (sync + restore --out)",
        cli_restore,
        restic_restore,
        f"{cli_restore:.1f} s ({wall('cv.restore.sync'):.1f} + {wall('cv.restore.out'):.1f})",
        f"{restic_restore:.1f} s",
        1.0,
        "<= 1.0x",
    )
    row(
        "Fresh restore, Rust API (sync to a listener)",
        api_restore["sync_s"],
        restic_restore,
        f"{api_restore['sync_s']:.1f} s ({api_restore['operations_delivered']:,} ops)",
        f"{restic_restore:.1f} s",
        0.5,
        "<= 0.5x",
    )
    cv_inc = [num(f"cv.inc{k}.bytes_up") for k in incs]
    restic_inc = [num(f"restic.inc{k}.bytes") for k in incs]
    cv_inc_avg = sum(cv_inc) / len(cv_inc)
    restic_inc_avg = sum(restic_inc) / len(restic_inc)
    row(
        f"Bytes per increment of 1,000 msgs (avg of {len(incs)})",
        cv_inc_avg,
        restic_inc_avg,
        f"{cv_inc_avg:,.0f} B (" + ", ".join(f"{v:,.0f}" for v in cv_inc) + ")",
        f"{restic_inc_avg:,.0f} B (" + ", ".join(f"{v:,.0f}" for v in restic_inc) + ")",
        1 / 50,
        "<= 0.02x (1/50)",
    )
    amort_sum = api_amortized["increments_bytes_up"]
    amort_first = api_amortized["first_backup_bytes_up"]
    row(
        f"Amortized: {api_amortized['syncs']} syncs x {api_amortized['per_sync']} msgs on "
        f"{api_amortized['base_messages']:,} msgs, bytes / first backup",
        amort_sum,
        amort_first,
        f"{amort_sum:,} B",
        f"{amort_first:,} B (first backup)",
        0.10,
        "<= 0.10x",
    )
    limit = 128.0
    cli_backup_rss = max(rss("cv.import"), rss("cv.sync"))
    row(
        "Peak RSS, full backup, CLI (max of import, sync)",
        cli_backup_rss,
        rss("restic.backup"),
        f"{cli_backup_rss:.0f} MiB ({rss('cv.import'):.0f}, {rss('cv.sync'):.0f})",
        f"{rss('restic.backup'):.0f} MiB",
        goal_text="<= 128 MiB",
        absolute=(cli_backup_rss, limit),
    )
    row(
        "Peak RSS, full backup, Rust API",
        rss("api.backup"),
        rss("restic.backup"),
        f"{rss('api.backup'):.0f} MiB",
        f"{rss('restic.backup'):.0f} MiB",
        goal_text="<= 128 MiB",
        absolute=(rss("api.backup"), limit),
    )
    cv_inc_rss = max(max(rss(f"cv.inc{k}.import"), rss(f"cv.inc{k}.sync")) for k in incs)
    restic_inc_rss = max(rss(f"restic.inc{k}") for k in incs)
    row(
        "Peak RSS, increment (max over steps)",
        cv_inc_rss,
        restic_inc_rss,
        f"{cv_inc_rss:.0f} MiB",
        f"{restic_inc_rss:.0f} MiB",
        goal_text="<= 128 MiB",
        absolute=(cv_inc_rss, limit),
    )
    cli_restore_rss = max(rss("cv.restore.sync"), rss("cv.restore.out"))
    row(
        "Peak RSS, fresh restore, CLI (max of sync, restore)",
        cli_restore_rss,
        rss("restic.restore"),
        f"{cli_restore_rss:.0f} MiB ({rss('cv.restore.sync'):.0f}, "
        f"{rss('cv.restore.out'):.0f})",
        f"{rss('restic.restore'):.0f} MiB",
        goal_text="<= 128 MiB",
        absolute=(cli_restore_rss, limit),
    )
    row(
        "Peak RSS, fresh restore, Rust API",
        rss("api.restore"),
        rss("restic.restore"),
        f"{rss('api.restore'):.0f} MiB",
        f"{rss('restic.restore'):.0f} MiB",
        goal_text="<= 128 MiB",
        absolute=(rss("api.restore"), limit),
    )
    row(
        "Peak RSS, amortized run, Rust API",
        rss("api.amortized"),
        0,
        f"{rss('api.amortized'):.0f} MiB",
        "-",
        goal_text="<= 128 MiB",
        absolute=(rss("api.amortized"), limit),
    )
    app_db = num("app_db_bytes")
    state_after = num("cv.state_after_backup")
    state_peak = num("cv.state_peak_import")
    api_state = api_backup.get("state_bytes", 0)
    row(
        "Local state after full backup, Rust API, content cache off (the app's database is "
        "the source of truth) / app.db",
        api_state,
        app_db,
        size(api_state),
        f"{size(app_db)} (app.db)",
        0.25,
        "<= 0.25x",
    )
    row(
        "Local state after full backup, CLI (content cache on, sealed) / app.db",
        state_after,
        app_db,
        size(state_after),
        f"{size(app_db)} (app.db)",
        0.25,
        "<= 0.25x",
    )
    row(
        "Local state at its peak during import, CLI / app.db",
        state_peak,
        app_db,
        size(state_peak),
        f"{size(app_db)} (app.db)",
        0.5,
        "<= 0.5x",
    )
    state_peak_sync = num("cv.state_peak_sync")
    row(
        "(info) Local state at its peak during the full sync / app.db",
        state_peak_sync,
        app_db,
        size(state_peak_sync),
        f"{size(app_db)} (app.db)",
    )
    cv_store = num("cv.store_after_backup")
    restic_repo = num("restic.repo_after_backup")
    row(
        "(info) Store after full backup: bucket dir / restic repo",
        cv_store,
        restic_repo,
        size(cv_store),
        size(restic_repo),
    )
    restic_cache = num("restic.cache_after_backup")
    row(
        "(info) Local state after full backup: CLI state dir / restic's cache dir",
        state_after,
        restic_cache,
        size(state_after),
        size(restic_cache),
    )
    cv_inc_wall = sum(wall(f"cv.inc{k}.import") + wall(f"cv.inc{k}.sync") for k in incs) / len(
        incs
    )
    restic_inc_wall = sum(wall(f"restic.inc{k}") for k in incs) / len(incs)
    row(
        "(info) Increment wall, CLI import + sync / restic backup (avg)",
        cv_inc_wall,
        restic_inc_wall,
        f"{cv_inc_wall:.2f} s",
        f"{restic_inc_wall:.2f} s",
    )

    print(
        f"chatvault vs restic {values.get('restic.version', '?')}: {values['messages']} messages "
        f"in 200 chats; chatvault {values.get('chatvault.rev', '?')}; "
        f"corpus.jsonl {size(num('corpus_jsonl_bytes'))}, app.db {size(app_db)}"
    )
    print()
    print("| measure | chatvault | restic / reference | ratio | goal | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("Every step (wall clock and peak RSS from /usr/bin/time -v):")
    print()
    print("| step | wall | peak RSS |")
    print("| --- | --- | --- |")
    for name, (w, r) in steps.items():
        print(f"| {name} | {w:.2f} s | {r / 1024:.0f} MiB |")
    print()
    print(
        "Rust API backup: open {open_s:.2f} s, JSON parsing {parse_s:.2f} s (not counted), "
        "record {record_s:.1f} s, sync {sync_s:.1f} s, {objects_up} objects, "
        "{bytes_up:,} bytes up".format(**api_backup)
    )
    print(
        "Rust API record cost per message by tenth of the history (us): "
        + ", ".join(f"{v:.0f}" for v in api_backup["record_us_per_message_by_tenth"])
    )
    print(
        "Rust API restore: open {open_s:.2f} s, sync {sync_s:.1f} s, {objects_down} objects, "
        "{bytes_down:,} bytes down, {operations_delivered:,} operations to the listener, "
        "{messages:,} messages in local state".format(**api_restore)
    )
    print(
        "Amortized: first backup {first_backup_bytes_up:,} B in {first_backup_s:.1f} s; "
        "{syncs} syncs in {increments_s:.1f} s; median sync {median_sync_bytes:,} B, largest "
        "{max_sync_bytes:,} B; {large_syncs} syncs over 64 KiB carried {large_syncs_bytes:,} B "
        "(automatic checkpoints)".format(**api_amortized)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("corpus")
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_corpus)
    p = sub.add_parser("increment")
    p.add_argument("--db", required=True)
    p.add_argument("--jsonl", required=True)
    p.set_defaults(run=cmd_increment)
    p = sub.add_parser("table")
    p.add_argument("--dir", required=True)
    p.set_defaults(run=cmd_table)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
