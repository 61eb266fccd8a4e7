#!/usr/bin/env bash
# Seeds the fuzz corpora with the objects and texts of tests/vectors.
set -euo pipefail
cd "$(dirname "$0")"
python3 - <<'PY'
import json, os, hashlib
vectors = "../tests/vectors"
def put(target, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{hashlib.sha1(data).hexdigest()}", "wb") as f:
        f.write(data)
for case in json.load(open(f"{vectors}/recovery_key.json"))["valid"]:
    put("recovery_key_text", case["text"].encode())
for case in json.load(open(f"{vectors}/recovery_key.json"))["invalid"]:
    put("recovery_key_text", case["text"].encode())
for case in json.load(open(f"{vectors}/sealed_objects.json")):
    obj = bytes.fromhex(case["object"])
    target = {1: "keyring", 2: "sealed_object", 3: "passphrase_envelope"}[case["kind"]]
    put(target, obj)
    put("segment", obj)
PY

# The keyed targets: protobuf bodies written by hand (wire format), so the fuzzer starts from
# bodies that decode and pass the checks, and mutates from there. The first byte is the mode.
python3 - <<'PY'
import hashlib, os

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value

def msg(*fields):
    return b"".join(field(n, v) for n, v in fields if v is not None)

def put(target, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{hashlib.sha1(data).hexdigest()}", "wb") as f:
        f.write(data)

DEV = bytes([1] * 16)
OTHER = bytes([2] * 16)
stamp = lambda wall, counter=0, dev=DEV: msg((1, wall), (2, counter), (3, dev))
upsert = lambda chat, mid, wall, at=0: msg(
    (1, stamp(wall)), (3, msg((1, chat), (2, mid), (4, at), (5, "hello")))
)
delete_message = lambda chat, mid, wall: msg((1, stamp(wall)), (4, msg((1, chat), (2, mid))))
upsert_chat = lambda chat, wall: msg((1, stamp(wall)), (2, msg((1, chat), (2, "title"), (3, "m1"))))
delete_chat = lambda chat, wall: msg((1, stamp(wall)), (5, chat))
head = lambda dev, seq, h=b"\x11" * 32: msg((1, dev), (2, seq), (3, h))
grant = lambda chat, kid=b"\xcc" * 16: msg((1, chat), (2, kid), (3, b"\x06" * 32))

ops = [upsert("c", "1", 10, 5), upsert("c", "2", 11, 7), delete_message("c", "1", 12),
       upsert_chat("c", 13), delete_chat("c", 14)]
chat_operations = msg((1, "c"), *[(2, op) for op in ops])
# segment_inner: 0 = segment body, 1 = chat block body, 2 = frame.
for seq, prev in [(1, None), (2, b"\x22" * 32)]:
    put("segment_inner", b"\x00" + msg((1, DEV), (2, seq), (3, prev), (4, head(OTHER, 3)),
                                      (5, grant("c")), (6, msg((1, b"\xcc" * 16), (2, b"x" * 80))),
                                      (7, "phone"), (8, "linux")))
put("segment_inner", b"\x01" + chat_operations)
put("segment_inner", b"\x01" + msg((1, "c"), (2, upsert("c", "1", 10))))
put("segment_inner", b"\x02\x01" + bytes([0, 0, 0, 0, 5, 0, 0, 0, 5]) + b"hello")
put("segment_inner", b"\x02\x01" + bytes([1, 0, 0, 0, 5, 0, 0, 0, 14]) +
    bytes.fromhex("28b52ffd2005290000") + b"hello")
# checkpoint_inner: even = index body, odd = block body (after offset, range bytes).
pack = "packs/" + DEV.hex() + "/0000000000000001/0000"
index = msg((1, DEV), (2, 1), (3, head(DEV, 2)), (3, head(OTHER, 1)), (4, grant("c")),
            (5, msg((1, pack), (2, 300))),
            (6, msg((1, "c"), (2, b"\xcc" * 16), (3, 0), (4, 0), (5, 120),
                    (6, msg((1, 5), (2, "1"))), (7, msg((1, 7), (2, "2"))), (8, b"\xbb" * 16))),
            (6, msg((1, "c"), (2, b"\xcc" * 16), (3, 0), (4, 120), (5, 100), (8, b"\xbc" * 16))),
            (7, msg((1, "gone"), (2, stamp(3)))), (8, 1))
put("checkpoint_inner", b"\x00" + index)
put("checkpoint_inner", b"\x10" + index)
checkpoint_block = msg((1, "c"), (2, upsert("c", "1", 10, 5)), (2, upsert("c", "2", 11, 7)))
for mode in [1, 5, 9]:
    put("checkpoint_inner", bytes([mode, 3, 133, 135, 1]) + checkpoint_block)
# names: even = one text, odd = values then lines.
for text in ["segments/" + DEV.hex() + "/0000000000000001",
             "checkpoints/" + DEV.hex() + "/00000000000000ff", pack,
             "ab" * 32 + "/0000000a", "s3://bucket/prefix?endpoint=http://127.0.0.1:3900&region=garage",
             "file:///tmp/vault", "mem://"]:
    put("names", b"\x00" + text.encode())
put("names", b"\x01" + bytes(range(90)) + b"segments/x\nstray\n" + pack.encode())
# merge and engine read choices byte by byte: any bytes are a script.
put("merge", bytes(range(256)))
put("engine", bytes([0, 0, 1, 1, 0, 2, 5, 7, 0, 0, 0, 6, 15, 3, 1, 3]))
PY

# devices: the first byte picks the format (mode 4: roster entries, length-prefixed, each followed
# by its 16-byte id and the re-signing choices).
python3 - <<'PY'
import hashlib, json, os
v = json.load(open("../tests/vectors/devices.json"))
def put(data):
    os.makedirs("corpus/devices", exist_ok=True)
    with open("corpus/devices/" + hashlib.sha1(data).hexdigest(), "wb") as f:
        f.write(data)
put(b"\x00" + v["link"]["offer_text"].encode())
put(b"\x01" + bytes.fromhex(v["key_box"]["box"]))
put(b"\x02" + bytes.fromhex(v["link"]["joiner_key"]) + bytes.fromhex(v["link"]["messages"][0]["sealed"]))
put(b"\x03" + bytes.fromhex(v["epoch"]["object"]))
roster = b"\x04" + bytes([len(v["roster"]["entries"]) - 1])
for e in v["roster"]["entries"]:
    body = bytes.fromhex(e["body"])
    if len(body) < 256:
        roster += bytes([len(body)]) + body + bytes.fromhex(e["id"]) + b"\x01\x00"
put(roster)
PY

