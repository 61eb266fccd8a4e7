//! What the vault should hold after the kill trials: the JSON Lines they import, generated from a
//! seed, applied to a model of the merged state; and exports parsed back into the same shape, so
//! a difference names the chat and the message.

use std::collections::BTreeMap;

/// SplitMix64: small, seedable, and the same on every machine, so a seed replays a run's data
/// and delays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }

    pub fn percent(&mut self, chance: u64) -> bool {
        self.next() % 100 < chance
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatRow {
    pub title: String,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub sender: String,
    pub sent_at_ms: i64,
    pub text: String,
    pub kind: String,
    /// Standard base64 with padding, as the CLI writes it back.
    pub payload: String,
    pub reply_to: Option<String>,
}

/// The visible state: chats, and live messages by (chat, message id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub chats: BTreeMap<String, ChatRow>,
    pub messages: BTreeMap<(String, String), MessageRow>,
}

/// One JSON Lines line of an import.
#[derive(Clone, Debug)]
pub enum Line {
    Chat {
        chat_id: String,
        row: ChatRow,
    },
    Message {
        chat_id: String,
        message_id: String,
        row: MessageRow,
    },
    DeleteMessage {
        chat_id: String,
        message_id: String,
    },
    DeleteChat {
        chat_id: String,
    },
}

impl Line {
    pub fn to_json(&self) -> String {
        let value = match self {
            Line::Chat { chat_id, row } => serde_json::json!({
                "type": "chat", "chat_id": chat_id, "title": row.title, "members": row.members,
            }),
            Line::Message {
                chat_id,
                message_id,
                row,
            } => {
                let mut value = serde_json::json!({
                    "type": "message", "chat_id": chat_id, "message_id": message_id,
                    "sender": row.sender, "sent_at_ms": row.sent_at_ms, "text": row.text,
                    "reply_to": row.reply_to,
                });
                if !row.kind.is_empty() {
                    value["kind"] = row.kind.clone().into();
                }
                if !row.payload.is_empty() {
                    value["payload"] = row.payload.clone().into();
                }
                value
            }
            Line::DeleteMessage {
                chat_id,
                message_id,
            } => serde_json::json!({
                "type": "delete_message", "chat_id": chat_id, "message_id": message_id,
            }),
            Line::DeleteChat { chat_id } => {
                serde_json::json!({"type": "delete_chat", "chat_id": chat_id})
            }
        };
        value.to_string()
    }

    /// The merge's rules for one device writing in order: an upsert replaces, a delete removes,
    /// deleting a chat removes its metadata and messages (later lines bring it back).
    pub fn apply(&self, state: &mut State) {
        match self {
            Line::Chat { chat_id, row } => {
                state.chats.insert(chat_id.clone(), row.clone());
            }
            Line::Message {
                chat_id,
                message_id,
                row,
            } => {
                state
                    .messages
                    .insert((chat_id.clone(), message_id.clone()), row.clone());
            }
            Line::DeleteMessage {
                chat_id,
                message_id,
            } => {
                state
                    .messages
                    .remove(&(chat_id.clone(), message_id.clone()));
            }
            Line::DeleteChat { chat_id } => {
                state.chats.remove(chat_id);
                state.messages.retain(|(chat, _), _| chat != chat_id);
            }
        }
    }
}

pub fn write_lines(path: &std::path::Path, lines: &[Line]) {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line.to_json());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

const PAYLOADS: [&str; 4] = ["AAEC", "CCo=", "3q2+7w==", "////"];
const TEXTS: [&str; 4] = ["hello", "dinner at 7? 🍝", "ok 👍", "a longer line of text"];

/// `count` new lines for the device tagged `tag` (its chats are `{tag}-chat0..5`: devices never
/// write the same chat, so the model is their union whatever the stamps). They create, edit and
/// delete messages, rename chats, and now and then delete a chat and start it again.
pub fn generate(
    rng: &mut Rng,
    state: &State,
    tag: &str,
    next_id: &mut u64,
    count: usize,
) -> Vec<Line> {
    let mut scratch = state.clone();
    let mut lines = Vec::with_capacity(count + 8);
    while lines.len() < count {
        let chat_id = format!("{tag}-chat{}", rng.range(0, 6));
        *next_id += 1;
        let id = *next_id;
        let line = if !scratch.chats.contains_key(&chat_id) {
            Line::Chat {
                chat_id,
                row: ChatRow {
                    title: format!("Chat {tag} {id} 💬"),
                    members: vec![tag.into(), format!("friend{}", id % 7)],
                },
            }
        } else {
            let live: Vec<&(String, String)> = scratch
                .messages
                .keys()
                .filter(|(chat, _)| *chat == chat_id)
                .collect();
            let roll = rng.range(0, 100);
            if roll < 5 {
                Line::Chat {
                    chat_id,
                    row: ChatRow {
                        title: format!("Renamed {tag} {id}"),
                        members: vec![tag.into()],
                    },
                }
            } else if roll < 6 {
                Line::DeleteChat { chat_id }
            } else if roll < 14 && !live.is_empty() {
                let (chat_id, message_id) = (*rng.pick(&live)).clone();
                Line::Message {
                    chat_id,
                    message_id,
                    row: message(rng, id, true),
                }
            } else if roll < 20 && !live.is_empty() {
                let (chat_id, message_id) = (*rng.pick(&live)).clone();
                Line::DeleteMessage {
                    chat_id,
                    message_id,
                }
            } else {
                Line::Message {
                    chat_id,
                    message_id: format!("m{id}"),
                    row: message(rng, id, false),
                }
            }
        };
        line.apply(&mut scratch);
        lines.push(line);
    }
    lines
}

fn message(rng: &mut Rng, id: u64, edit: bool) -> MessageRow {
    MessageRow {
        sender: format!("person{}", id % 5),
        sent_at_ms: 1_700_000_000_000 + id as i64,
        text: format!(
            "{} {id}{}",
            rng.pick(&TEXTS),
            if edit { " (edited)" } else { "" }
        ),
        kind: if rng.percent(30) {
            "text".into()
        } else {
            String::new()
        },
        payload: if rng.percent(30) {
            (*rng.pick(&PAYLOADS)).into()
        } else {
            String::new()
        },
        reply_to: rng.percent(10).then(|| format!("m{}", id / 2)),
    }
}

/// An export (`restore --out`) parsed into the model's shape; a chat or message listed twice is
/// an error (applied twice where it should have merged).
pub fn parse_export(text: &str) -> Result<State, String> {
    let mut state = State::default();
    for (number, line) in text.lines().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("export line {}: {e}", number + 1))?;
        let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
        match value["type"].as_str() {
            Some("chat") => {
                let row = ChatRow {
                    title: field("title"),
                    members: value["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .map(|v| v.as_str().unwrap_or_default().to_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if state.chats.insert(field("chat_id"), row).is_some() {
                    return Err(format!("chat {} exported twice", field("chat_id")));
                }
            }
            Some("message") => {
                let key = (field("chat_id"), field("message_id"));
                let row = MessageRow {
                    sender: field("sender"),
                    sent_at_ms: value["sent_at_ms"].as_i64().unwrap_or(i64::MIN),
                    text: field("text"),
                    kind: field("kind"),
                    payload: field("payload"),
                    reply_to: value["reply_to"].as_str().map(str::to_owned),
                };
                if state.messages.insert(key.clone(), row).is_some() {
                    return Err(format!("message {key:?} exported twice"));
                }
            }
            other => return Err(format!("export line {}: type {other:?}", number + 1)),
        }
    }
    Ok(state)
}

/// What differs between the expected and the actual state (at most a few of each kind), or
/// `None` when they are equal.
pub fn difference(expected: &State, actual: &State) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut out = Vec::new();
    describe(&mut out, "chat", &expected.chats, &actual.chats);
    describe(&mut out, "message", &expected.messages, &actual.messages);
    Some(format!(
        "expected {} chats and {} messages, found {} and {}: {}",
        expected.chats.len(),
        expected.messages.len(),
        actual.chats.len(),
        actual.messages.len(),
        out.join("; ")
    ))
}

fn describe<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    what: &str,
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) {
    let lost: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(k))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(k))
        .collect();
    let changed: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| actual.get(k).filter(|a| *a != v).map(|a| (k, v, a)))
        .collect();
    if !lost.is_empty() {
        out.push(format!(
            "{} {what}(s) lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        ));
    }
    if !extra.is_empty() {
        out.push(format!(
            "{} unexpected {what}(s), e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(3)]
        ));
    }
    if !changed.is_empty() {
        out.push(format!(
            "{} {what}(s) differ, e.g. {:?}",
            changed.len(),
            &changed[..changed.len().min(2)]
        ));
    }
}
