#!/usr/bin/env python3
"""Independent implementation of the chatvault format (docs/FORMAT.md), checked against
tests/vectors/*.json.

Written from docs/FORMAT.md and proto/chatvault/v1/chatvault.proto only, never from the Rust
sources, so that passing it shows the specification alone is enough to read and write the format.

Run from anywhere:  python3 tests/independent/check_vectors.py
If PyNaCl, argon2-cffi or zstandard are missing, the script creates the pinned virtualenv with
scripts/python-env.sh and re-executes itself with that interpreter.

Prints one line per failed check, then `N passed, M failed`; exits 1 if any check failed.
"""

import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
VECTORS = os.path.join(ROOT, "tests", "vectors")


def _bootstrap():
    """Import the third-party primitives, re-executing under the pinned venv if needed."""
    try:
        import argon2.low_level  # noqa: F401
        import nacl.bindings  # noqa: F401
        import zstandard  # noqa: F401
        return
    except ImportError:
        if os.environ.get("CHATVAULT_PY_REEXEC"):
            raise
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "python-env.sh")],
        stdout=subprocess.PIPE, check=True, text=True,
    ).stdout
    py = out.strip().splitlines()[-1]
    env = dict(os.environ, CHATVAULT_PY_REEXEC="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


_bootstrap()

import argon2.low_level  # noqa: E402
import nacl.bindings  # noqa: E402
import nacl.exceptions  # noqa: E402
import zstandard  # noqa: E402


class FormatError(Exception):
    """A reader rejection; `reason` names the rule (stable, for comparisons)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Section 1 and 3: HKDF-SHA256 (RFC 5869) and the key tree
# ---------------------------------------------------------------------------------------------

def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length):
    if length > 255 * 32:
        raise ValueError("HKDF length too large")
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]


def hkdf(salt, ikm, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


ROOT_SALT = b"chatvault/v1"
LABELS = {
    "vault-id": 16,
    "keyring": 32,
    "log": 32,
    "naming": 32,
    "attachment": 32,
    "device-link": 32,
}
# Section 3's labels of the recovery key's own keys (format version 2), expanded from
# RPRK = HKDF-Extract("chatvault/v2/recovery", recovery key), not from PRK: PRK is epoch 0's
# secret, which devices hold.
RECOVERY_SALT = b"chatvault/v2/recovery"
LABELS_V2 = {"chatvault/v2/recovery-agreement": 32, "chatvault/v2/recovery-signing": 32}


def derive(recovery_key, label):
    if len(recovery_key) != 32:
        raise ValueError("recovery key must be 32 bytes")
    prk = hkdf_extract(ROOT_SALT, recovery_key)
    return hkdf_expand(prk, b"chatvault/v1/" + label.encode("ascii"), LABELS[label])


def vault_id(recovery_key):
    return derive(recovery_key, "vault-id")


def object_name(naming_key, namespace, ident):
    """Section 4."""
    return hmac.new(naming_key, namespace.encode("ascii") + b"\x00" + ident,
                    hashlib.sha256).digest()[:16].hex()


# ---------------------------------------------------------------------------------------------
# Section 2.1: recovery key text form
# ---------------------------------------------------------------------------------------------

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DECODE = {c: i for i, c in enumerate(ALPHABET)}
DECODE.update({"O": 0, "I": 1, "L": 1})
GF_POLY = 0x25  # x^5 + x^2 + 1
RK_VERSION = 1


def gf_mul(a, b):
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a & 0x20:
            a ^= GF_POLY
    return r


def gf_pow(a, n):
    r = 1
    for _ in range(n):
        r = gf_mul(r, a)
    return r


def gf_inv(a):
    if a == 0:
        raise ZeroDivisionError
    return gf_pow(a, 30)  # the multiplicative group has order 31


ALPHA = 2


def checksum_sums(symbols):
    s1 = s2 = 0
    for i, s in enumerate(symbols):
        s1 ^= s
        s2 ^= gf_mul(gf_pow(ALPHA, i), s)
    return s1, s2


def encode_recovery_key(key, version=RK_VERSION):
    if len(key) != 32:
        raise ValueError("recovery key must be 32 bytes")
    bits = (int.from_bytes(key, "big") << 4) | (version & 0xF)  # 260 bits
    syms = [(bits >> (5 * (51 - i))) & 31 for i in range(52)]
    s1, s2 = checksum_sums(syms)
    num = s2 ^ gf_mul(gf_pow(ALPHA, 53), s1)
    den = gf_mul(gf_pow(ALPHA, 52), 1 ^ ALPHA)
    s52 = gf_mul(num, gf_inv(den))
    s53 = s1 ^ s52
    syms += [s52, s53]
    assert checksum_sums(syms) == (0, 0)
    text = "".join(ALPHABET[s] for s in syms)
    return "-".join(text[i:i + 6] for i in range(0, 54, 6))


def parse_recovery_key(text):
    """Returns the 32 key bytes or raises FormatError(reason)."""
    syms = []
    for ch in text:
        if ch == "-" or ch.isspace():
            continue
        v = DECODE.get(ch.upper())
        if v is None or not ch.isascii():
            raise FormatError("invalid_character", "%r at position %d" % (ch, len(syms) + 1))
        syms.append(v)
    if len(syms) != 54:
        raise FormatError("wrong_length", "%d key characters" % len(syms))
    if checksum_sums(syms) != (0, 0):
        raise FormatError("checksum_mismatch")
    bits = 0
    for s in syms[:52]:
        bits = (bits << 5) | s
    if bits & 0xF != RK_VERSION:
        raise FormatError("unsupported_version", "version %d" % (bits & 0xF))
    return (bits >> 4).to_bytes(32, "big")


# ---------------------------------------------------------------------------------------------
# Section 5: Padmé
# ---------------------------------------------------------------------------------------------

def padme(length):
    if length < 2:
        return length
    e = length.bit_length() - 1          # floor(log2 L)
    s = e.bit_length()                   # floor(log2 E) + 1
    z = e - s
    mask = (1 << z) - 1
    return (length + mask) & ~mask


# ---------------------------------------------------------------------------------------------
# Minimal proto3 wire format
# ---------------------------------------------------------------------------------------------

def _read_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise FormatError("protobuf", "truncated varint")
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise FormatError("protobuf", "varint overflow")
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FormatError("protobuf", "varint too long")


def pb_fields(buf):
    """Yields (field number, wire type, value): int for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise FormatError("protobuf", "field number 0")
        if wt == 0:
            v, pos = _read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise FormatError("protobuf", "truncated fixed64")
            v, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            if n > len(buf) - pos:
                raise FormatError("protobuf", "length beyond buffer")
            v, pos = bytes(buf[pos:pos + n]), pos + n
        elif wt == 5:
            if pos + 4 > len(buf):
                raise FormatError("protobuf", "truncated fixed32")
            v, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise FormatError("protobuf", "unsupported wire type %d" % wt)
        yield field, wt, v


def pb_message(buf, schema):
    """Decodes into a dict. schema: field -> (name, kind, repeated) with kind in
    'uint64', 'uint32', 'bytes', 'string', or a nested schema dict. Unknown fields are ignored;
    a known field with the wrong wire type is an error; for singular fields the last one wins
    (nested singular messages are merged, as proto3 requires)."""
    out = {}
    for name, kind, repeated in schema.values():
        if repeated:
            out[name] = []
        elif isinstance(kind, dict):
            out[name] = None
        elif kind in ("bytes",):
            out[name] = b""
        elif kind == "string":
            out[name] = ""
        else:
            out[name] = 0
    for field, wt, v in pb_fields(buf):
        if field not in schema:
            continue
        name, kind, repeated = schema[field]
        if isinstance(kind, dict) or kind in ("bytes", "string"):
            if wt != 2:
                raise FormatError("protobuf", "field %d: wire type %d" % (field, wt))
            if isinstance(kind, dict):
                if repeated:
                    val = pb_message(v, kind)
                else:
                    # Merging repeated occurrences of a singular message = decoding the concatenation.
                    prev = out.get("__raw_" + name, b"")
                    out["__raw_" + name] = prev + v
                    val = pb_message(prev + v, kind)
            elif kind == "string":
                try:
                    val = v.decode("utf-8")
                except UnicodeDecodeError:
                    raise FormatError("protobuf", "field %d: invalid UTF-8" % field)
            else:
                val = v
        elif kind == "fixed64":
            if wt != 1:
                raise FormatError("protobuf", "field %d: wire type %d" % (field, wt))
            val = v
        else:
            if wt != 0:
                raise FormatError("protobuf", "field %d: wire type %d" % (field, wt))
            val = v & (0xFFFFFFFF if kind == "uint32" else 0xFFFFFFFFFFFFFFFF)
        if repeated:
            out[name].append(val)
        else:
            out[name] = val
    for k in [k for k in out if k.startswith("__raw_")]:
        del out[k]
    return out


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_encode(msg, schema):
    """Canonical proto3 encoding: fields in number order, default scalars omitted."""
    out = bytearray()
    for field in sorted(schema):
        name, kind, repeated = schema[field]
        values = msg.get(name)
        if values is None:
            continue
        if not repeated:
            values = [values]
        for v in values:
            if isinstance(kind, dict):
                data = pb_encode(v, kind)
                out += _varint(field << 3 | 2) + _varint(len(data)) + data
            elif kind in ("bytes", "string"):
                data = v.encode("utf-8") if kind == "string" else bytes(v)
                if not repeated and not data:
                    continue
                out += _varint(field << 3 | 2) + _varint(len(data)) + data
            elif kind == "fixed64":
                if not repeated and v == 0:
                    continue
                out += _varint(field << 3 | 1) + struct.pack("<Q", v)
            else:
                if not repeated and v == 0:
                    continue
                out += _varint(field << 3) + _varint(v)
    return bytes(out)


CHAT_KEY_ENTRY = {1: ("chat_id", "string", False), 2: ("key", "bytes", False)}
KEYRING = {1: ("generation", "uint64", False), 2: ("chats", CHAT_KEY_ENTRY, True)}
ARGON2ID_PARAMS = {
    1: ("memory_kib", "uint32", False),
    2: ("iterations", "uint32", False),
    3: ("parallelism", "uint32", False),
    4: ("salt", "bytes", False),
}
PASSPHRASE_ENVELOPE = {
    1: ("kdf", ARGON2ID_PARAMS, False),
    2: ("nonce", "bytes", False),
    3: ("ciphertext", "bytes", False),
}
CHAT = {1: ("chat_id", "string", False), 2: ("title", "string", False),
        3: ("members", "string", True), 4: ("payload", "bytes", False)}
MESSAGE = {1: ("chat_id", "string", False), 2: ("message_id", "string", False),
           3: ("sender", "string", False), 4: ("sent_at_ms", "uint64", False),
           5: ("text", "string", False), 6: ("reply_to", "string", False),
           8: ("kind", "string", False), 9: ("payload", "bytes", False)}
CHAT_BATCH = {1: ("chat", CHAT, False), 2: ("messages", MESSAGE, True)}


def decode_keyring(body):
    """Section 7, with its reader rules."""
    kr = pb_message(body, KEYRING)
    seen = set()
    for e in kr["chats"]:
        cid = e["chat_id"].encode("utf-8")
        if not 1 <= len(cid) <= 1024:
            raise FormatError("keyring", "chat_id length %d" % len(cid))
        if cid in seen:
            raise FormatError("keyring", "duplicate chat_id %r" % e["chat_id"])
        seen.add(cid)
        if len(e["key"]) != 32:
            raise FormatError("keyring", "key of %d bytes" % len(e["key"]))
    return kr


def keyring_sorted(kr):
    ids = [e["chat_id"].encode("utf-8") for e in kr["chats"]]
    return ids == sorted(ids)


# ---------------------------------------------------------------------------------------------
# Section 6: sealed objects
# ---------------------------------------------------------------------------------------------

MAGIC = b"CVLT"
FORMAT_VERSION = 1
SUITE_XCHACHA = 1
KIND_KEYRING, KIND_CHAT_DATA, KIND_ENVELOPE = 1, 2, 3
SEALED_KINDS = (1, 2, 4, 5, 6)
MAX_OBJECT_LEN = 64 * 1024 * 1024
MAX_PLAINTEXT_LEN = 56 * 1024 * 1024
MAX_NAME_LEN = 1024
HEADER_LEN, NONCE_LEN, TAG_LEN, FRAME_HEADER_LEN = 8, 24, 16, 9
EMPTY_OBJECT_LEN = HEADER_LEN + NONCE_LEN + TAG_LEN + FRAME_HEADER_LEN  # 57
ZSTD_LEVEL = 3


def header(kind, epoch=0):
    """Section 6; in a key epoch other than 0 (section 13), version 2 and the epoch last."""
    return MAGIC + bytes([FORMAT_VERSION if epoch == 0 else 2, SUITE_XCHACHA, kind, epoch])


def sealed_aad(hdr, vid, name):
    name_b = name.encode("utf-8")
    if len(name_b) > MAX_NAME_LEN:
        raise FormatError("name_too_long")
    return hdr + vid + struct.pack(">I", len(name_b)) + name_b


def aead_encrypt(key, nonce, aad, plaintext):
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def aead_decrypt(key, nonce, aad, ciphertext):
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise FormatError("tag")


def zstd_compress(body):
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)


def seal(key, nonce, kind, vid, name, body, stored=None, epoch=0):
    """Writer. `stored` overrides the compressed bytes (to reproduce another zstd encoder's
    output); by default the body is compressed at level 3 and kept only if shorter."""
    if kind not in SEALED_KINDS:
        raise ValueError("kind %d is not a sealed object kind" % kind)
    if stored is None:
        comp = zstd_compress(body)
        compression, stored = (1, comp) if len(comp) < len(body) else (0, body)
    else:
        compression = 0 if stored == body else 1
    total = padme(EMPTY_OBJECT_LEN + len(stored))
    frame = bytes([compression]) + struct.pack(">II", len(body), len(stored)) + stored
    frame += bytes(total - HEADER_LEN - NONCE_LEN - TAG_LEN - len(frame))
    hdr = header(kind, epoch)
    obj = hdr + nonce + aead_encrypt(key, nonce, sealed_aad(hdr, vid, name), frame)
    assert len(obj) == total
    return obj


def open_sealed(obj, key, kind, vid, name, want_frame=False, epoch=0):
    """Reader, rejecting everything section 6 lists, in its order; an object of key epoch
    `epoch` >= 1 has version 2 and the epoch in its last header byte (section 13)."""
    if len(obj) > MAX_OBJECT_LEN:
        raise FormatError("too_large")
    if len(obj) < EMPTY_OBJECT_LEN:
        raise FormatError("too_short")
    hdr = bytes(obj[:HEADER_LEN])
    if hdr[:4] != MAGIC:
        raise FormatError("magic")
    if hdr[4] != (FORMAT_VERSION if epoch == 0 else 2):
        raise FormatError("version")
    if hdr[5] != SUITE_XCHACHA:
        raise FormatError("suite")
    if hdr[6] != kind:
        raise FormatError("kind")
    if hdr[7] != epoch:
        raise FormatError("reserved" if epoch == 0 else "epoch")
    nonce = bytes(obj[HEADER_LEN:HEADER_LEN + NONCE_LEN])
    frame = aead_decrypt(key, nonce, sealed_aad(hdr, vid, name), bytes(obj[HEADER_LEN + NONCE_LEN:]))
    compression = frame[0]
    plain_len, stored_len = struct.unpack_from(">II", frame, 1)
    if plain_len > MAX_PLAINTEXT_LEN:
        raise FormatError("plain_len_too_large")
    if stored_len > len(frame) - FRAME_HEADER_LEN:
        raise FormatError("stored_len_beyond_frame")
    stored = frame[FRAME_HEADER_LEN:FRAME_HEADER_LEN + stored_len]
    padding = frame[FRAME_HEADER_LEN + stored_len:]
    if any(padding):
        raise FormatError("nonzero_padding")
    if len(obj) != padme(EMPTY_OBJECT_LEN + stored_len):
        raise FormatError("wrong_padded_length")
    if compression == 0:
        if plain_len != stored_len:
            raise FormatError("stored_length_mismatch")
        body = stored
    elif compression == 1:
        try:
            d = zstandard.ZstdDecompressor().decompressobj()
            body = d.decompress(stored)
        except zstandard.ZstdError as e:
            raise FormatError("zstd", str(e))
        if not d.eof or d.unused_data:
            raise FormatError("zstd", "not exactly one complete frame")
        if len(body) != plain_len:
            raise FormatError("zstd_length")
    else:
        raise FormatError("compression")
    if want_frame:
        return body, compression, stored
    return body


# ---------------------------------------------------------------------------------------------
# Section 8: passphrase envelope
# ---------------------------------------------------------------------------------------------

MAX_ENVELOPE_LEN = 4096


def passphrase_bytes(passphrase):
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def argon2id(passphrase, params):
    return argon2.low_level.hash_secret_raw(
        secret=passphrase_bytes(passphrase),
        salt=params["salt"],
        time_cost=params["iterations"],
        memory_cost=params["memory_kib"],
        parallelism=params["parallelism"],
        hash_len=32,
        type=argon2.low_level.Type.ID,
        version=19,
    )


def envelope_aad(hdr, vid, kdf):
    return (hdr + vid + struct.pack(">III", kdf["memory_kib"], kdf["iterations"], kdf["parallelism"])
            + bytes([len(kdf["salt"])]) + kdf["salt"])


def parse_envelope(obj):
    """Everything checked before Argon2 runs."""
    if len(obj) > MAX_ENVELOPE_LEN:
        raise FormatError("too_large")
    if len(obj) < HEADER_LEN:
        raise FormatError("too_short")
    hdr = bytes(obj[:HEADER_LEN])
    if hdr[:4] != MAGIC:
        raise FormatError("magic")
    if hdr[4] != FORMAT_VERSION:
        raise FormatError("version")
    if hdr[5] != SUITE_XCHACHA:
        raise FormatError("suite")
    if hdr[6] != KIND_ENVELOPE:
        raise FormatError("kind")
    if hdr[7] != 0:
        raise FormatError("reserved")
    env = pb_message(bytes(obj[HEADER_LEN:]), PASSPHRASE_ENVELOPE)
    kdf = env["kdf"]
    if kdf is None:
        raise FormatError("missing_kdf")
    if not 8192 <= kdf["memory_kib"] <= 262144:
        raise FormatError("memory")
    if not 1 <= kdf["iterations"] <= 16:
        raise FormatError("iterations")
    if not 1 <= kdf["parallelism"] <= 8:
        raise FormatError("parallelism")
    if not 16 <= len(kdf["salt"]) <= 64:
        raise FormatError("salt")
    if len(env["nonce"]) != NONCE_LEN:
        raise FormatError("nonce")
    if len(env["ciphertext"]) != 32 + TAG_LEN:
        raise FormatError("ciphertext")
    return hdr, env


def open_envelope(obj, passphrase, vid):
    hdr, env = parse_envelope(obj)
    kek = argon2id(passphrase, env["kdf"])
    rk = aead_decrypt(kek, env["nonce"], envelope_aad(hdr, vid, env["kdf"]), env["ciphertext"])
    if vault_id(rk) != vid:
        raise FormatError("vault_id_mismatch")
    return rk


def seal_envelope(recovery_key, passphrase, params, nonce):
    hdr = header(KIND_ENVELOPE)
    vid = vault_id(recovery_key)
    kek = argon2id(passphrase, params)
    ct = aead_encrypt(kek, nonce, envelope_aad(hdr, vid, params), recovery_key)
    return hdr + pb_encode({"kdf": params, "nonce": nonce, "ciphertext": ct}, PASSPHRASE_ENVELOPE)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.verbose = "-v" in sys.argv

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print("ok    " + what)
        else:
            self.failed += 1
            print("FAIL  " + what + (" (" + detail + ")" if detail else ""))
        return ok

    def run(self, what, fn):
        """fn() returns (ok, detail) or bool; an exception is a failure."""
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001
            return self.check(what, False, "%s: %s" % (type(e).__name__, e))
        if isinstance(r, tuple):
            return self.check(what, *r)
        return self.check(what, bool(r))

    def rejects(self, what, fn, reason=None):
        try:
            fn()
        except FormatError as e:
            if reason is not None and e.reason != reason:
                return self.check(what, False, "rejected as %s, expected %s" % (e.reason, reason))
            return self.check(what, True)
        except Exception as e:  # noqa: BLE001
            return self.check(what, False, "unexpected %s: %s" % (type(e).__name__, e))
        return self.check(what, False, "accepted")


def load(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)


def h(s):
    return bytes.fromhex(s)


def check_hkdf(c):
    vectors = load("hkdf.json")
    labels_seen = {}
    for i, v in enumerate(vectors):
        info = h(v["info"])
        c.run("hkdf[%d] %s" % (i, info.decode("ascii", "replace")),
              lambda v=v: (hkdf(h(v["salt"]), h(v["ikm"]), h(v["info"]), v["length"]) == h(v["okm"]),
                           "okm differs"))
        labels_seen.setdefault(v["ikm"], set()).add(info)
        # The vectors are the key tree of section 3: same salt, labels and lengths.
        label = info.decode("ascii", "replace")
        if label in LABELS_V2:
            c.check("hkdf[%d] is a section-3 derivation" % i,
                    h(v["salt"]) == RECOVERY_SALT and LABELS_V2[label] == v["length"]
                    and hkdf_expand(hkdf_extract(RECOVERY_SALT, h(v["ikm"])), info, v["length"])
                    == h(v["okm"]),
                    "salt/label/length not as in section 3")
            continue
        c.check("hkdf[%d] is a section-3 derivation" % i,
                h(v["salt"]) == ROOT_SALT and label.startswith("chatvault/v1/")
                and LABELS.get(label[len("chatvault/v1/"):]) == v["length"]
                and derive(h(v["ikm"]), label[len("chatvault/v1/"):]) == h(v["okm"]),
                "salt/label/length not as in section 3")
    every_label = {b"chatvault/v1/" + k.encode() for k in LABELS} | {k.encode() for k in LABELS_V2}
    c.check("hkdf.json covers every label of section 3 for two keys",
            len(labels_seen) == 2 and all(s == every_label for s in labels_seen.values()))
    # RFC 5869 test case 1, as a sanity check of the HKDF implementation itself.
    c.check("hkdf RFC 5869 A.1",
            hkdf(h("000102030405060708090a0b0c"), h("0b" * 22), h("f0f1f2f3f4f5f6f7f8f9"), 42)
            == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                 "34007208d5b887185865"))


def check_aead(c):
    for i, v in enumerate(load("aead.json")):
        key, nonce, aad, pt, ct = (h(v[k]) for k in ("key", "nonce", "aad", "plaintext", "ciphertext"))
        c.run("aead[%d] encrypt" % i, lambda: aead_encrypt(key, nonce, aad, pt) == ct)
        c.run("aead[%d] decrypt" % i, lambda: aead_decrypt(key, nonce, aad, ct) == pt)
        bad = bytearray(ct)
        bad[-1] ^= 1
        c.rejects("aead[%d] rejects a modified tag" % i,
                  lambda: aead_decrypt(key, nonce, aad, bytes(bad)), "tag")
        c.rejects("aead[%d] rejects other aad" % i,
                  lambda: aead_decrypt(key, nonce, aad + b"x", ct), "tag")


def check_recovery_key(c):
    v = load("recovery_key.json")
    for i, e in enumerate(v["valid"]):
        c.run("recovery_key valid[%d] encode" % i,
              lambda e=e: (encode_recovery_key(h(e["bytes"])) == e["text"],
                           "got " + encode_recovery_key(h(e["bytes"]))))
        c.run("recovery_key valid[%d] parse" % i,
              lambda e=e: parse_recovery_key(e["text"]) == h(e["bytes"]))
    for i, e in enumerate(v["lenient"]):
        c.run("recovery_key lenient[%d] parse" % i,
              lambda e=e: parse_recovery_key(e["text"]) == h(e["bytes"]))
    for i, e in enumerate(v["invalid"]):
        c.rejects("recovery_key invalid[%d] %s" % (i, e["reason"]),
                  lambda e=e: parse_recovery_key(e["text"]), e["reason"])
    # Extra properties the spec claims (2.1): O/I/L aliases, every single substitution and every
    # adjacent transposition of different characters is detected.
    key = h(v["valid"][2]["bytes"])
    text = encode_recovery_key(key).replace("-", "")

    def substitutions():
        for pos in range(54):
            for ch in ALPHABET:
                if ch == text[pos]:
                    continue
                t = text[:pos] + ch + text[pos + 1:]
                try:
                    parse_recovery_key(t)
                    return False, "substitution at %d accepted" % pos
                except FormatError as e:
                    if e.reason != "checksum_mismatch":
                        return False, "substitution at %d: %s" % (pos, e.reason)
        return True, ""

    def transpositions():
        for pos in range(53):
            if text[pos] == text[pos + 1]:
                continue
            t = text[:pos] + text[pos + 1] + text[pos] + text[pos + 2:]
            try:
                parse_recovery_key(t)
                return False, "transposition at %d accepted" % pos
            except FormatError:
                pass
        return True, ""

    c.run("recovery_key detects every single substitution", substitutions)
    c.run("recovery_key detects every adjacent transposition", transpositions)
    zero = v["valid"][0]["text"]
    c.run("recovery_key reads O as 0 and I, L as 1",
          lambda: parse_recovery_key(zero.replace("0", "o").replace("1", "I")) == bytes(32)
          and parse_recovery_key(zero.replace("1", "l")) == bytes(32))
    c.rejects("recovery_key rejects U", lambda: parse_recovery_key("U" + zero[1:]),
              "invalid_character")
    # Version 2 with a correct checksum must be unsupported_version, not checksum_mismatch.
    c.rejects("recovery_key rejects version 2",
              lambda: parse_recovery_key(encode_recovery_key(key, version=2)), "unsupported_version")
    uv = [e for e in v["invalid"] if e["reason"] == "unsupported_version"]
    for e in uv:
        def has_valid_checksum(e=e):
            syms = [DECODE[ch] for ch in e["text"].replace("-", "").upper()]
            return checksum_sums(syms) == (0, 0)
        c.run("recovery_key unsupported_version vector has a valid checksum", has_valid_checksum)


def check_padme(c):
    def props():
        prev = 0
        for n in range(0, 1 << 16):
            p = padme(n)
            if p < n or p < prev:
                return False, "padme(%d) = %d" % (n, p)
            if n >= 2 and (p - n) * 43 > 5 * n:
                return False, "overhead at %d" % n
            if n >= 256 and (p - n) * 16 > n:
                return False, "overhead at %d" % n
            prev = p
        return True, ""
    c.run("padme bounds and monotonicity (section 5) up to 2^16", props)

    def sampled():
        import random
        rng = random.Random(1)
        for _ in range(200000):
            n = rng.randrange(1 << 16, 1 << 40)
            p = padme(n)
            if p < n or (p - n) * 32 > n or p & ((1 << ((n.bit_length() - 1) - (n.bit_length() - 1).bit_length())) - 1):
                return False, "padme(%d) = %d" % (n, p)
        return True, ""
    c.run("padme overhead at most 1/32 from 2^16 (sampled to 2^40)", sampled)
    c.check("padme(129) = 144 (worst case 5/43 of 129 is 15)", padme(129) == 144)


def check_sealed(c):
    objs = load("sealed_objects.json")
    keyring = None
    for i, o in enumerate(objs):
        if o["kind"] == KIND_KEYRING:
            rk = h(o["recovery_key"])
            keyring = decode_keyring(open_sealed(h(o["object"]), derive(rk, "keyring"), KIND_KEYRING,
                                                 vault_id(rk), o["name"]))
    for i, o in enumerate(objs):
        tag = "sealed[%d] kind %d (%s)" % (i, o["kind"], o.get("description", ""))
        rk = h(o["recovery_key"])
        vid = h(o["vault_id"])
        obj = h(o["object"])
        c.check(tag + ": vault id = HKDF(recovery key)", vault_id(rk) == vid)
        c.run(tag + ": recovery key text", lambda: encode_recovery_key(rk) == o["recovery_key_text"]
              and parse_recovery_key(o["recovery_key_text"]) == rk)
        if o["kind"] in (KIND_KEYRING, KIND_CHAT_DATA):
            check_sealed_object(c, tag, o, rk, vid, obj, keyring)
        elif o["kind"] == KIND_ENVELOPE:
            check_envelope(c, tag, o, rk, vid, obj)
        else:
            c.check(tag + ": known kind", False, "no check for kind %d" % o["kind"])


def check_sealed_object(c, tag, o, rk, vid, obj, keyring):
    key = h(o["key"])
    kind = o["kind"]
    name = o["name"]
    pt = h(o["plaintext"])
    nonce = h(o["nonce"])
    if kind == KIND_KEYRING:
        c.check(tag + ": key = HKDF keyring key", derive(rk, "keyring") == key)
    else:
        def from_keyring():
            entries = {e["chat_id"]: e["key"] for e in keyring["chats"]}
            return entries.get(o["chat_id"]) == key, "chat %r not in keyring with this key" % o["chat_id"]
        c.run(tag + ": key comes from the keyring vector", from_keyring)

    # Header, by hand.
    c.check(tag + ": header", obj[:8] == MAGIC + bytes([1, 1, kind, 0]), obj[:8].hex())
    c.check(tag + ": nonce at offset 8", obj[8:32] == nonce)

    result = {}

    def do_open():
        body, compression, stored = open_sealed(obj, key, kind, vid, name, want_frame=True)
        result.update(body=body, compression=compression, stored=stored)
        return body == pt, "plaintext differs"
    if not c.run(tag + ": opens to plaintext", do_open):
        return

    # The frame and the length rule, by hand.
    frame = aead_decrypt(key, nonce, sealed_aad(obj[:8], vid, name), obj[32:])
    comp, plain_len, stored_len = frame[0], *struct.unpack(">II", frame[1:9])
    c.check(tag + ": frame plain_len = len(plaintext)", plain_len == len(pt))
    c.check(tag + ": total length = padded(57 + stored_len)",
            len(obj) == padme(57 + stored_len), "%d vs padded(%d)" % (len(obj), 57 + stored_len))
    c.check(tag + ": padding is zero", not any(frame[9 + stored_len:]))
    if comp == 0:
        c.check(tag + ": compression 0 stores the body", frame[9:9 + stored_len] == pt)
    # Writer rule: compress, keep only if shorter.
    zc = zstd_compress(pt)
    c.check(tag + ": compression chosen as the writer rule says",
            comp == (1 if len(zc) < len(pt) else 0),
            "compression %d, zstd %d bytes vs body %d" % (comp, len(zc), len(pt)))
    if "description" in o and "zstd" in o["description"]:
        c.check(tag + ": is compressed", comp == 1)

    # Re-encrypt with the given nonce; the framing and padding rules must reproduce the object.
    c.run(tag + ": re-seal reproduces the object (given stored bytes)",
          lambda: seal(key, nonce, kind, vid, name, pt, stored=result["stored"]) == obj)
    c.run(tag + ": re-seal from plaintext alone (zstd level 3) reproduces the object",
          lambda: (seal(key, nonce, kind, vid, name, pt) == obj,
                   "stored bytes differ: ours %s, vector %s" % (zc[:12].hex(), result["stored"][:12].hex())))

    if kind == KIND_KEYRING:
        kr = keyring
        want = [(e["chat_id"], h(e["key"])) for e in o["chat_keys"]]
        c.check(tag + ": keyring chat ids and keys", [(e["chat_id"], e["key"]) for e in kr["chats"]] == want)
        c.check(tag + ": keyring generation 1", kr["generation"] == 1)
        c.check(tag + ": keyring entries in byte order of chat_id", keyring_sorted(kr))
        c.check(tag + ": keyring body is canonical protobuf", pb_encode(kr, KEYRING) == pt)
    elif kind == KIND_CHAT_DATA:
        if "ChatBatch" in o.get("description", ""):
            def batch():
                b = pb_message(pt, CHAT_BATCH)
                ok = b["chat"] is not None and b["chat"]["chat_id"] == o["chat_id"] and all(
                    m["chat_id"] == o["chat_id"] for m in b["messages"])
                return ok and len(b["messages"]) == 20, "%d messages" % len(b["messages"])
            c.run(tag + ": body decodes as ChatBatch of the chat", batch)

            def open_model():
                # Section 9.3: the app's kind and payload travel unchanged (every byte value).
                b = pb_message(pt, CHAT_BATCH)
                kinds = {m["message_id"]: (m["kind"], m["payload"]) for m in b["messages"]}
                ok = (b["chat"]["payload"] == bytes(range(256))
                      and kinds["m0"] == ("", b"")
                      and kinds["m3"] == ("image", bytes(range(255, -1, -1)))
                      and kinds["m5"] == ("reaction", bytes.fromhex("08011204f09f918d"))
                      and all(k == ("text", b"") for i, k in kinds.items()
                              if i not in ("m0", "m3", "m5")))
                return ok, "kinds and payloads %r" % sorted(kinds.items())[:3]
            c.run(tag + ": chat payload, message kinds and payloads", open_model)
            c.run(tag + ": ChatBatch body is canonical protobuf",
                  lambda: (pb_encode(pb_message(pt, CHAT_BATCH), CHAT_BATCH) == pt, "re-encoding differs"))

    # Negative checks.
    def flip_every_byte():
        accepted = []
        for pos in range(len(obj)):
            for mask in (0x01, 0x80):
                bad = bytearray(obj)
                bad[pos] ^= mask
                try:
                    open_sealed(bytes(bad), key, kind, vid, name)
                    accepted.append((pos, mask))
                except FormatError:
                    pass
        return not accepted, "accepted flips %s" % accepted[:5]
    c.run(tag + ": every single-byte flip is rejected", flip_every_byte)
    c.rejects(tag + ": flipped nonce rejected", lambda: open_sealed(
        obj[:8] + bytes([obj[8] ^ 0xFF]) + obj[9:], key, kind, vid, name), "tag")
    c.rejects(tag + ": other name rejected", lambda: open_sealed(obj, key, kind, vid, name + "x"), "tag")
    c.rejects(tag + ": other vault rejected",
              lambda: open_sealed(obj, key, kind, bytes(16), name), "tag")
    other_kind = KIND_CHAT_DATA if kind == KIND_KEYRING else KIND_KEYRING
    c.rejects(tag + ": expected as another kind rejected",
              lambda: open_sealed(obj, key, other_kind, vid, name), "kind")
    relabelled = obj[:6] + bytes([other_kind]) + obj[7:]
    c.rejects(tag + ": relabelled kind rejected (kind is in the AAD)",
              lambda: open_sealed(relabelled, key, other_kind, vid, name), "tag")
    c.rejects(tag + ": truncated object rejected", lambda: open_sealed(obj[:-1], key, kind, vid, name))
    c.rejects(tag + ": extended object rejected", lambda: open_sealed(obj + b"\0", key, kind, vid, name))
    c.rejects(tag + ": wrong key rejected", lambda: open_sealed(obj, bytes(32), kind, vid, name), "tag")


def crafted_frame_checks(c):
    """Reader rules that need a valid tag: seal hand-made frames under a test key."""
    key, nonce, vid, name = bytes(range(32)), bytes(24), bytes(range(16)), "crafted"
    hdr = header(KIND_CHAT_DATA)

    def obj(frame):
        return hdr + nonce + aead_encrypt(key, nonce, sealed_aad(hdr, vid, name), frame)

    def frame(comp, plain_len, stored, total=None, pad_byte=0):
        f = bytes([comp]) + struct.pack(">II", plain_len, len(stored)) + stored
        total = padme(57 + len(stored)) if total is None else total
        padn = total - 48 - len(f)
        return f + bytes([pad_byte]) * padn if padn > 0 else f

    body = b"hello world"
    c.run("crafted: well-formed frame opens",
          lambda: open_sealed(obj(frame(0, len(body), body)), key, 2, vid, name) == body)
    c.rejects("crafted: non-zero padding", lambda: open_sealed(
        obj(frame(0, len(body), body, pad_byte=1)), key, 2, vid, name), "nonzero_padding")
    c.rejects("crafted: longer than padded(57 + stored_len)", lambda: open_sealed(
        obj(frame(0, len(body), body, total=padme(57 + len(body)) + 64)), key, 2, vid, name),
        "wrong_padded_length")
    c.rejects("crafted: stored_len beyond frame", lambda: open_sealed(
        obj(bytes([0]) + struct.pack(">II", 100, 100) + bytes(10)), key, 2, vid, name),
        "stored_len_beyond_frame")
    c.rejects("crafted: compression 0 with plain_len != stored_len", lambda: open_sealed(
        obj(frame(0, len(body) + 1, body)), key, 2, vid, name), "stored_length_mismatch")
    c.rejects("crafted: unknown compression", lambda: open_sealed(
        obj(frame(2, len(body), body)), key, 2, vid, name), "compression")
    z = zstd_compress(b"a" * 1000)
    c.run("crafted: zstd frame opens",
          lambda: open_sealed(obj(frame(1, 1000, z)), key, 2, vid, name) == b"a" * 1000)
    c.rejects("crafted: zstd yielding another length", lambda: open_sealed(
        obj(frame(1, 999, z)), key, 2, vid, name), "zstd_length")
    c.rejects("crafted: garbage zstd", lambda: open_sealed(
        obj(frame(1, 5, b"hello")), key, 2, vid, name), "zstd")
    c.rejects("crafted: two zstd frames", lambda: open_sealed(
        obj(frame(1, 1000, z + z)), key, 2, vid, name), "zstd")
    c.rejects("crafted: plain_len above 56 MiB", lambda: open_sealed(
        obj(frame(1, MAX_PLAINTEXT_LEN + 1, z)), key, 2, vid, name), "plain_len_too_large")
    c.rejects("crafted: shorter than 57 bytes", lambda: open_sealed(
        hdr + nonce + bytes(24), key, 2, vid, name), "too_short")
    c.rejects("crafted: non-zero reserved byte", lambda: open_sealed(
        hdr[:7] + b"\x01" + obj(frame(0, 1, b"x"))[8:], key, 2, vid, name), "reserved")
    c.rejects("crafted: unknown version", lambda: open_sealed(
        hdr[:4] + b"\x02" + obj(frame(0, 1, b"x"))[5:], key, 2, vid, name), "version")
    c.rejects("crafted: unknown suite", lambda: open_sealed(
        hdr[:5] + b"\x02" + obj(frame(0, 1, b"x"))[6:], key, 2, vid, name), "suite")
    c.rejects("crafted: wrong magic", lambda: open_sealed(
        b"CVLX" + obj(frame(0, 1, b"x"))[4:], key, 2, vid, name), "magic")

    # Keyring reader rules.
    good = {"chat_id": "a", "key": bytes(32)}
    c.rejects("crafted: keyring duplicate chat_id", lambda: decode_keyring(
        pb_encode({"generation": 1, "chats": [good, good]}, KEYRING)), "keyring")
    c.rejects("crafted: keyring key of 31 bytes", lambda: decode_keyring(
        pb_encode({"generation": 1, "chats": [{"chat_id": "a", "key": bytes(31)}]}, KEYRING)), "keyring")
    c.rejects("crafted: keyring empty chat_id", lambda: decode_keyring(
        pb_encode({"generation": 1, "chats": [{"chat_id": "", "key": bytes(32)}]}, KEYRING)), "keyring")


def check_envelope(c, tag, o, rk, vid, obj):
    pp = o["passphrase"]
    params = {k: (h(v) if k == "salt" else v) for k, v in o["argon2id"].items()}
    c.check(tag + ": header", obj[:8] == MAGIC + bytes([1, 1, 3, 0]))
    c.check(tag + ": plaintext is the recovery key", h(o["plaintext"]) == rk)

    def parsed():
        _, env = parse_envelope(obj)
        return (env["kdf"] == params and env["nonce"] == h(o["nonce"]),
                "parsed %r" % env)
    c.run(tag + ": protobuf envelope fields", parsed)
    c.run(tag + ": opens with the passphrase", lambda: open_envelope(obj, pp, vid) == h(o["plaintext"]))
    c.run(tag + ": opens with the NFD spelling of the passphrase",
          lambda: open_envelope(obj, unicodedata.normalize("NFD", pp), vid) == rk)
    c.rejects(tag + ": wrong passphrase rejected", lambda: open_envelope(obj, pp + " ", vid), "tag")
    c.rejects(tag + ": other vault id rejected", lambda: open_envelope(obj, pp, bytes(16)), "tag")
    c.run(tag + ": re-seal reproduces the object",
          lambda: seal_envelope(rk, pp, params, h(o["nonce"])) == obj)

    def flip_every_byte():
        accepted = []
        for pos in range(len(obj)):
            bad = bytearray(obj)
            bad[pos] ^= 0x01
            try:
                open_envelope(bytes(bad), pp, vid)
                accepted.append(pos)
            except FormatError:
                pass
        return not accepted, "accepted flips at %s" % accepted
    c.run(tag + ": every single-byte flip is rejected", flip_every_byte)

    # Bounds checked before Argon2 (section 8), with an otherwise valid envelope.
    def variant(**kw):
        p = dict(params)
        p.update({k: v for k, v in kw.items() if k in p})
        env = {"kdf": p, "nonce": kw.get("nonce", h(o["nonce"])),
               "ciphertext": kw.get("ciphertext", bytes(48))}
        if kw.get("no_kdf"):
            env["kdf"] = None
        return header(3) + pb_encode(env, PASSPHRASE_ENVELOPE)
    for what, kw, reason in [
        ("memory 8191", {"memory_kib": 8191}, "memory"),
        ("memory 262145", {"memory_kib": 262145}, "memory"),
        ("iterations 0", {"iterations": 0}, "iterations"),
        ("iterations 17", {"iterations": 17}, "iterations"),
        ("parallelism 9", {"parallelism": 9}, "parallelism"),
        ("salt 15 bytes", {"salt": bytes(15)}, "salt"),
        ("salt 65 bytes", {"salt": bytes(65)}, "salt"),
        ("nonce 12 bytes", {"nonce": bytes(12)}, "nonce"),
        ("ciphertext 47 bytes", {"ciphertext": bytes(47)}, "ciphertext"),
        ("missing kdf", {"no_kdf": True}, "missing_kdf"),
    ]:
        c.rejects(tag + ": rejects " + what, lambda kw=kw: parse_envelope(variant(**kw)), reason)
    c.rejects(tag + ": rejects over 4096 bytes",
              lambda: parse_envelope(obj + bytes(4097 - len(obj))), "too_large")



# Attachments (FORMAT.md, "Attachments"): STREAM chunks under a per-content key.
SUITE_STREAM = 2
KIND_ATTACHMENT_CHUNK = 7
MIN_STREAM_LEN = 1024
ATTACHMENT_REF_SCHEMA = {
    1: ("content_id", "bytes", False),
    2: ("size", "uint64", False),
    3: ("chunk_size", "uint32", False),
    4: ("name", "string", False),
    5: ("mime", "string", False),
    # The key epoch whose attachment key made the content id (section 13); 0 before epochs.
    6: ("key_epoch", "uint32", False),
}


def attachment_content_id(attachment_key, chunk_size, content):
    return hmac.new(attachment_key, b"chatvault/v1/attachment-id\x00" + struct.pack(">I", chunk_size)
                    + content, hashlib.sha256).digest()


def attachment_file_key(attachment_key, content_id):
    return hmac.new(attachment_key, b"chatvault/v1/attachment-file-key\x00" + content_id,
                    hashlib.sha256).digest()


def chunk_nonce(index, last):
    return bytes(15) + struct.pack(">Q", index) + bytes([1 if last else 0])


def chunk_header():
    return MAGIC + bytes([FORMAT_VERSION, SUITE_STREAM, KIND_ATTACHMENT_CHUNK, 0])


def open_chunk(file_key, vid, index, last, obj):
    if obj[:8] != chunk_header():
        raise FormatError("header")
    return aead_decrypt(file_key, chunk_nonce(index, last), chunk_header() + vid, obj[8:])


def check_attachments(c):
    v = load("attachments.json")
    rk = h(v["recovery_key"])
    vid = vault_id(rk)
    akey = derive(rk, "attachment")
    c.check("attachments: vault id and attachment key derive from the recovery key",
            vid.hex() == v["vault_id"] and akey.hex() == v["attachment_key"])
    c.check("attachments: prefix is <vault id>-attachments/", v["prefix"] == vid.hex() + "-attachments/")
    for case in v["cases"]:
        tag = "attachment %s" % case["description"]
        content = bytes((i * 7 + case["seed"]) % 256 for i in range(case["size"]))
        chunk_size = case["chunk_size"]
        cid = attachment_content_id(akey, chunk_size, content)
        c.check(tag + ": content id", cid.hex() == case["content_id"])
        fkey = attachment_file_key(akey, cid)
        c.check(tag + ": file key", fkey.hex() == case["file_key"])
        stream_len = padme(max(case["size"], MIN_STREAM_LEN))
        c.check(tag + ": stream length is Padme(max(size, 1024))", stream_len == case["stream_len"])
        stream = content + bytes(stream_len - len(content))
        count = -(-stream_len // chunk_size)
        chunks = case["chunks"]
        c.check(tag + ": chunk count", len(chunks) == count)
        for ch in chunks:
            i, last, obj = ch["index"], ch["last"], h(ch["object"])
            plain = stream[i * chunk_size:(i + 1) * chunk_size]
            c.check(tag + ": chunk %d name" % i, ch["name"] == "%s/%08x" % (cid.hex(), i))
            c.check(tag + ": chunk %d last flag" % i, last == (i == count - 1))
            c.run(tag + ": chunk %d opens to the padded stream" % i,
                  lambda: open_chunk(fkey, vid, i, last, obj) == plain)
            c.run(tag + ": chunk %d re-seals byte for byte" % i,
                  lambda: chunk_header() + aead_encrypt(fkey, chunk_nonce(i, last), chunk_header() + vid,
                                                        plain) == obj)
            c.rejects(tag + ": chunk %d at another index" % i,
                      lambda: open_chunk(fkey, vid, i + 1, last, obj), "tag")
            c.rejects(tag + ": chunk %d with the other last flag" % i,
                      lambda: open_chunk(fkey, vid, i, not last, obj), "tag")
            c.rejects(tag + ": chunk %d in another vault" % i,
                      lambda: open_chunk(fkey, bytes(16), i, last, obj), "tag")
        ref = pb_message(h(case["reference_proto"]), ATTACHMENT_REF_SCHEMA)
        c.check(tag + ": reference", ref == {"content_id": cid, "size": case["size"],
                                             "chunk_size": chunk_size, "name": case["name"],
                                             "mime": case["mime"], "key_epoch": 0}, repr(ref))


# ---------------------------------------------------------------------------------------------
# Section 9: segments (kind 4) and checkpoints (kind 6) with their packs
# ---------------------------------------------------------------------------------------------

KIND_SEGMENT, KIND_CHECKPOINT_INDEX = 4, 6
STAMP = {1: ("wall_ms", "uint64", False), 2: ("counter", "uint32", False),
         3: ("device_id", "bytes", False)}
MESSAGE_REF = {1: ("chat_id", "string", False), 2: ("message_id", "string", False)}
OPERATION = {1: ("stamp", STAMP, False), 2: ("upsert_chat", CHAT, False),
             3: ("upsert_message", MESSAGE, False), 4: ("delete_message", MESSAGE_REF, False),
             5: ("delete_chat", "string", False)}
CHAT_OPERATIONS = {1: ("chat_id", "string", False), 2: ("operations", OPERATION, True)}
CHAT_CHECKPOINT = CHAT_OPERATIONS  # same fields: chat_id = 1, operations = 2
# `epoch` (field 4): the key's key epoch (section 13); a reader takes the smaller of it and the
# epoch of the object that carries the grant.
CHAT_KEY_GRANT = {1: ("chat_id", "string", False), 2: ("key_id", "bytes", False),
                  3: ("key", "bytes", False), 4: ("epoch", "uint32", False)}
# `tag` (field 4, fixed64): the segment's random tag, the second number of its name.
DEVICE_HEAD = {1: ("device_id", "bytes", False), 2: ("seq", "uint64", False),
               3: ("hash", "bytes", False), 4: ("tag", "fixed64", False)}
SEALED_CHAT_BLOCK = {1: ("key_id", "bytes", False), 2: ("sealed", "bytes", False)}
SEGMENT = {1: ("device_id", "bytes", False), 2: ("seq", "uint64", False),
           3: ("prev_hash", "bytes", False), 4: ("seen", DEVICE_HEAD, True),
           5: ("keys", CHAT_KEY_GRANT, True), 6: ("chats", SEALED_CHAT_BLOCK, True),
           7: ("device_name", "string", False), 8: ("platform", "string", False),
           9: ("signature", "bytes", False)}
PACK_REF = {1: ("name", "string", False), 2: ("size", "uint64", False)}
HISTORY_POSITION = {1: ("sent_at_ms", "uint64", False), 2: ("message_id", "string", False)}
PACKED_CHAT = {1: ("chat_id", "string", False), 2: ("key_id", "bytes", False),
               3: ("pack", "uint32", False), 4: ("offset", "uint64", False),
               5: ("length", "uint64", False), 6: ("first", HISTORY_POSITION, False),
               7: ("last", HISTORY_POSITION, False), 8: ("block_id", "bytes", False),
               9: ("hash", "bytes", False)}
CHAT_TOMBSTONE = {1: ("chat_id", "string", False), 2: ("stamp", STAMP, False),
                  3: ("deleted_by", "bytes", False), 4: ("deleted_in", "uint64", False),
                  5: ("unaware", "bytes", True), 6: ("deleted_in_tag", "fixed64", False)}
CHECKPOINT_INDEX = {1: ("device_id", "bytes", False), 2: ("seq", "uint64", False),
                    3: ("covered", DEVICE_HEAD, True), 4: ("keys", CHAT_KEY_GRANT, True),
                    5: ("packs", PACK_REF, True), 6: ("chats", PACKED_CHAT, True),
                    7: ("deleted_chats", CHAT_TOMBSTONE, True), 8: ("created_at_ms", "uint64", False),
                    9: ("signature", "bytes", False)}


# Section 9.3: a stamp's wall_ms is at most 2^47 (about the year 6429). The bound is a rule of
# the data, the same for every reader; an object holding a stamp past it is malformed.
MAX_WALL_MS = 1 << 47


def decode_stamp(stamp):
    """A decoded Stamp checked as section 9.3 requires (returns it)."""
    if stamp is None:
        raise FormatError("stamp", "missing")
    if len(stamp["device_id"]) != 16:
        raise FormatError("stamp", "device id of %d bytes" % len(stamp["device_id"]))
    if stamp["wall_ms"] > MAX_WALL_MS:
        raise FormatError("stamp", "wall_ms %d is past 2^47" % stamp["wall_ms"])
    return stamp


def decode_chat_operations(body):
    """A chat block's body (ChatOperations / ChatCheckpoint), every stamp checked."""
    decoded = pb_message(body, CHAT_OPERATIONS)
    for op in decoded["operations"]:
        decode_stamp(op["stamp"])
    return decoded


def decode_checkpoint_index(body):
    """A checkpoint index body, its chat deletions checked: stamps (section 9.3) and places
    (section 9.5: a place is a 16-byte device id, a non-zero seq and a non-zero tag, unaware
    devices are 16-byte ids and need a place, one placed tombstone per chat)."""
    index = pb_message(body, CHECKPOINT_INDEX)
    placed = set()
    for tombstone in index["deleted_chats"]:
        decode_stamp(tombstone["stamp"])
        if not tombstone["deleted_by"]:
            if tombstone["unaware"] or tombstone["deleted_in"] or tombstone["deleted_in_tag"]:
                raise FormatError("tombstone", "unaware devices, a seq or a tag without a place")
            continue
        if not tombstone["deleted_in"] or not tombstone["deleted_in_tag"]:
            raise FormatError("tombstone", "a place without its seq or tag")
        if len(tombstone["deleted_by"]) != 16 or any(len(d) != 16 for d in tombstone["unaware"]):
            raise FormatError("tombstone", "a device id that is not 16 bytes")
        if tombstone["chat_id"] in placed:
            raise FormatError("tombstone", "two placed tombstones of one chat")
        placed.add(tombstone["chat_id"])
    return index


def check_tombstone_places(c):
    """Section 9.5's rules for where a chat's delete was written and who may not have seen it,
    on crafted index bodies."""
    def index(*tombstones):
        return pb_encode({"device_id": bytes(16), "seq": 1, "deleted_chats": [
            dict({"chat_id": "c", "stamp": {"wall_ms": 5, "counter": 0,
                                            "device_id": bytes(range(16))}}, **t)
            for t in tombstones]}, CHECKPOINT_INDEX)
    d = bytes(range(16))
    c.run("tombstone: a placed tombstone with an unaware device decodes",
          lambda: decode_checkpoint_index(index(
              {"deleted_by": d, "deleted_in": 4, "deleted_in_tag": 9, "unaware": [bytes(16)]}))
          ["deleted_chats"][0]["unaware"] == [bytes(16)])
    c.run("tombstone: one without a place decodes",
          lambda: len(decode_checkpoint_index(index({}))["deleted_chats"]) == 1)
    for why, t in [("unaware devices without a place", {"unaware": [d]}),
                   ("a seq without a place", {"deleted_in": 3}),
                   ("a tag without a place", {"deleted_in_tag": 3}),
                   ("a place without its tag", {"deleted_by": d, "deleted_in": 1}),
                   ("a place without its seq", {"deleted_by": d, "deleted_in_tag": 1}),
                   ("a 15-byte deleting device", {"deleted_by": d[:15], "deleted_in": 1,
                                                  "deleted_in_tag": 1}),
                   ("a 17-byte unaware device", {"deleted_by": d, "deleted_in": 1,
                                                 "deleted_in_tag": 1, "unaware": [d + b"x"]})]:
        c.rejects("tombstone: " + why + " is malformed",
                  lambda t=t: decode_checkpoint_index(index(t)), "tombstone")
    c.rejects("tombstone: two placed tombstones of one chat are malformed",
              lambda: decode_checkpoint_index(
                  index({"deleted_by": d, "deleted_in": 1, "deleted_in_tag": 1},
                        {"deleted_by": d, "deleted_in": 2, "deleted_in_tag": 2})),
              "tombstone")


def check_stamp_bound(c):
    """Section 9.3's bound on crafted bodies: 2^47 is accepted, anything past it rejected, in a
    chat block's operations and in a checkpoint index's chat deletions alike."""
    def stamp(wall_ms):
        return {"wall_ms": wall_ms, "counter": 3, "device_id": bytes(range(16))}

    def block(wall_ms):
        return pb_encode({"chat_id": "c", "operations": [
            {"stamp": stamp(wall_ms), "delete_chat": "c"}]}, CHAT_OPERATIONS)

    def index(wall_ms):
        return pb_encode({"device_id": bytes(16), "seq": 1, "deleted_chats": [
            {"chat_id": "c", "stamp": stamp(wall_ms)}]}, CHECKPOINT_INDEX)
    c.run("stamp bound: a block stamped at 2^47 decodes", lambda: decode_chat_operations(
        block(MAX_WALL_MS))["operations"][0]["stamp"]["wall_ms"] == MAX_WALL_MS)
    for wall_ms in (MAX_WALL_MS + 1, (1 << 64) - 1):
        c.rejects("stamp bound: a block stamped at %d is malformed" % wall_ms,
                  lambda: decode_chat_operations(block(wall_ms)), "stamp")
        c.rejects("stamp bound: an index deleting a chat at %d is malformed" % wall_ms,
                  lambda: decode_checkpoint_index(index(wall_ms)), "stamp")
    c.run("stamp bound: an index deleting a chat at 2^47 decodes",
          lambda: len(decode_checkpoint_index(index(MAX_WALL_MS))["deleted_chats"]) == 1)


def without_defaults(value):
    """A decoded message (or a vector's field list) as JSON-comparable data: bytes in hex, and
    fields at their protobuf default (0, empty, absent) left out, so both sides compare alike."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).hex()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = without_defaults(v)
            if v not in (None, "", 0, [], {}):
                out[k] = v
        return out
    if isinstance(value, list):
        return [without_defaults(v) for v in value]
    return value


def fields_match(what, decoded, expected):
    got, want = without_defaults(decoded), without_defaults(expected)
    return got == want, "%s: decoded %r, vector %r" % (what, got, want)


def check_chat_blocks(c, tag, name_of, blocks, sealed_of, vid, keys_by_id, device_id):
    """Each chat block: a kind-2 object under its chat key named name_of(i) (section 9), whose
    body is protobuf ChatOperations (segments) / ChatCheckpoint (checkpoints) of that chat."""
    for i, b in enumerate(blocks):
        btag = "%s block %d" % (tag, i)
        sealed = sealed_of(i)
        # The name is computed here from section 9, not taken from the vector.
        block_name = name_of(i)
        c.check(btag + ": name per section 9", b["name"] == block_name, b["name"])
        key_id = h(b["key_id"])
        chat, key = keys_by_id[key_id]
        c.check(btag + ": key belongs to the block's chat", chat == b["chat_id"])
        body = h(b["body"])
        c.run(btag + ": opens to its body", lambda: open_sealed(sealed, key, KIND_CHAT_DATA, vid,
                                                                  block_name) == body)
        c.rejects(btag + ": under another block's name", lambda: open_sealed(
            sealed, key, KIND_CHAT_DATA, vid, block_name + "0"), "tag")
        c.run(btag + ": re-seal with its nonce reproduces it",
              lambda: seal(key, h(b["nonce"]), KIND_CHAT_DATA, vid, block_name, body) == sealed)
        decoded = decode_chat_operations(body)
        c.check(btag + ": chat id", decoded["chat_id"] == b["chat_id"])
        c.run(btag + ": operations", lambda: fields_match("operations", decoded["operations"],
                                                          b["operations"]))
        for op in decoded["operations"]:
            body_of = [k for k in ("upsert_chat", "upsert_message", "delete_message")
                       if op[k] is not None] + (["delete_chat"] if op["delete_chat"] else [])
            c.check(btag + ": one body per operation", len(body_of) == 1, repr(body_of))
            target = op[body_of[0]] if body_of and body_of[0] != "delete_chat" else None
            chat_of = target["chat_id"] if target else op["delete_chat"]
            c.check(btag + ": operation of the block's chat", chat_of == b["chat_id"])
            if device_id is not None:
                c.check(btag + ": stamped by the segment's device",
                        op["stamp"]["device_id"] == device_id)
        c.check(btag + ": body is canonical protobuf",
                pb_encode(decoded, CHAT_OPERATIONS) == body)


def check_sync_objects(c):
    v = load("sync_objects.json")
    rk = h(v["recovery_key"])
    vid = vault_id(rk)
    log_key = derive(rk, "log")
    c.check("sync: vault id and log key derive from the recovery key",
            vid.hex() == v["vault_id"] and log_key.hex() == v["log_key"])
    keys_by_id = {h(k["key_id"]): (k["chat_id"], h(k["key"])) for k in v["chat_keys"]}

    # Segment.
    s = v["segment"]
    tag = "segment"
    obj, body, name = h(s["object"]), h(s["body"]), s["name"]
    f = s["fields"]
    c.check(tag + ": name is segments/<device hex>/<seq 016x>-<tag 016x>-<parent tag 016x>",
            name == segment_name(f["device_id"], f["seq"], s["tag"], s["parent_tag"]), name)
    c.check(tag + ": a valid name (non-zero tag and parent tag after seq 1)",
            valid_segment_name(name), name)
    c.check(tag + ": header", obj[:8] == MAGIC + bytes([1, 1, KIND_SEGMENT, 0]))
    c.run(tag + ": opens under the log key to its body",
          lambda: open_sealed(obj, log_key, KIND_SEGMENT, vid, name) == body)
    c.rejects(tag + ": under the next sequence number", lambda: open_sealed(
        obj, log_key, KIND_SEGMENT, vid,
        segment_name(f["device_id"], f["seq"] + 1, s["tag"], s["parent_tag"])), "tag")
    c.rejects(tag + ": under another tag", lambda: open_sealed(
        obj, log_key, KIND_SEGMENT, vid,
        segment_name(f["device_id"], f["seq"], "%016x" % (int(s["tag"], 16) ^ 1), s["parent_tag"])),
        "tag")
    c.rejects(tag + ": after another parent", lambda: open_sealed(
        obj, log_key, KIND_SEGMENT, vid,
        segment_name(f["device_id"], f["seq"], s["tag"], "%016x" % (int(s["parent_tag"], 16) ^ 1))),
        "tag")
    c.rejects(tag + ": as a checkpoint index",
              lambda: open_sealed(obj, log_key, KIND_CHECKPOINT_INDEX, vid, name), "kind")
    c.run(tag + ": re-seal with its nonce reproduces it",
          lambda: seal(log_key, h(s["nonce"]), KIND_SEGMENT, vid, name, body) == obj)
    c.check(tag + ": hash = SHA-256 of the whole object", hashlib.sha256(obj).hexdigest() == s["hash"])
    seg = pb_message(body, SEGMENT)
    c.run(tag + ": fields", lambda: fields_match(
        "segment", {k: seg[k] for k in seg if k not in ("chats", "signature")}, f))
    # Section 9.2: the signature is the body's last field; it covers the rest of the body.
    sig = seg.get("signature", b"")
    covered = body[:-66]
    c.check(tag + ": signature appended last (0x4a 0x40 || 64 bytes)",
            len(sig) == 64 and body[-66:] == b"\x4a\x40" + sig)
    seg_message = (b"chatvault/v2/segment" + vid + len(name).to_bytes(2, "big") + name.encode()
                   + hashlib.sha256(covered).digest())
    signer = h(s["signer_verifying_key"])
    c.run(tag + ": the writer's signature verifies",
          lambda: ed25519_verifies(signer, seg_message, sig))
    c.run(tag + ": not as another segment's",
          lambda: not ed25519_verifies(signer, seg_message.replace(name.encode(), name.encode()[:-1] + b"0"), sig))
    c.check(tag + ": prev_hash is 32 bytes for seq > 1", f["seq"] > 1 and len(seg["prev_hash"]) == 32)
    c.check(tag + ": one sealed block per chat", len(seg["chats"]) == len(s["blocks"]))
    c.check(tag + ": block key ids", [b["key_id"] for b in seg["chats"]]
            == [h(b["key_id"]) for b in s["blocks"]])
    c.check(tag + ": body is canonical protobuf", pb_encode(seg, SEGMENT) == body)
    c.check(tag + ": what the signature covers is the segment without it",
            pb_encode({k: seg[k] for k in seg if k != "signature"}, SEGMENT) == covered)
    check_chat_blocks(c, tag, lambda i: "%s#%d" % (name, i), s["blocks"], lambda i: seg["chats"][i]["sealed"], vid, keys_by_id,
                      seg["device_id"])

    # Checkpoint index and its pack.
    k = v["checkpoint"]
    tag = "checkpoint"
    obj, body, name = h(k["object"]), h(k["body"]), k["name"]
    f = k["fields"]
    c.check(tag + ": name is checkpoints/<device hex>/<seq 016x>-<tag 016x>, the tag not zero",
            name == "checkpoints/%s/%016x-%s" % (f["device_id"], f["seq"], k["tag"])
            and int(k["tag"], 16) != 0, name)
    c.check(tag + ": header", obj[:8] == MAGIC + bytes([1, 1, KIND_CHECKPOINT_INDEX, 0]))
    c.run(tag + ": opens under the log key to its body",
          lambda: open_sealed(obj, log_key, KIND_CHECKPOINT_INDEX, vid, name) == body)
    c.rejects(tag + ": as a segment",
              lambda: open_sealed(obj, log_key, KIND_SEGMENT, vid, name), "kind")
    c.run(tag + ": re-seal with its nonce reproduces it",
          lambda: seal(log_key, h(k["nonce"]), KIND_CHECKPOINT_INDEX, vid, name, body) == obj)
    index = decode_checkpoint_index(body)
    c.run(tag + ": fields", lambda: fields_match(
        "checkpoint", {k: index[k] for k in index if k != "signature"}, f))
    c.check(tag + ": body is canonical protobuf", pb_encode(index, CHECKPOINT_INDEX) == body)
    # Section 9.5: signed as a segment is (9.2), under its own label.
    sig = index.get("signature", b"")
    c.check(tag + ": signature appended last (0x4a 0x40 || 64 bytes)",
            len(sig) == 64 and body[-66:] == b"\x4a\x40" + sig)
    c.check(tag + ": what the signature covers is the index without it",
            pb_encode({k: index[k] for k in index if k != "signature"}, CHECKPOINT_INDEX) == body[:-66])
    index_digest = hashlib.sha256(body[:-66]).digest()
    signed_part = vid + len(name).to_bytes(2, "big") + name.encode() + index_digest
    index_signer = h(k["signer_verifying_key"])
    c.run(tag + ": the writer's signature verifies",
          lambda: ed25519_verifies(index_signer, b"chatvault/v2/checkpoint" + signed_part, sig))
    c.run(tag + ": not as a segment's signature",
          lambda: not ed25519_verifies(index_signer, b"chatvault/v2/segment" + signed_part, sig))
    c.check(tag + ": keys only of chats with blocks",
            {g["chat_id"] for g in index["keys"]} == {e["chat_id"] for e in index["chats"]})
    prefix = "packs/%s/%016x-%s/" % (f["device_id"], f["seq"], k["tag"])
    packs = [h(p["object"]) for p in k["packs"]]
    for n, (ref, p) in enumerate(zip(index["packs"], k["packs"])):
        ptag = "%s pack %d" % (tag, n)
        c.check(ptag + ": named <prefix><n as 4 digits>", ref["name"] == p["name"] == prefix + "%04d" % n)
        c.check(ptag + ": size as listed", ref["size"] == len(packs[n]))
        used = [e for e in index["chats"] if e["pack"] == n]
        end = 0
        for e in used:
            c.check(ptag + ": blocks follow each other", e["offset"] == end)
            end = e["offset"] + e["length"]
        c.check(ptag + ": length = padded(blocks)", len(packs[n]) == padme(end))
        c.check(ptag + ": zero bytes after the blocks", not any(packs[n][end:]))
    c.check(tag + ": one entry per block", len(index["chats"]) == len(k["blocks"]))

    def block_bytes(i):
        e = index["chats"][i]
        return packs[e["pack"]][e["offset"]:e["offset"] + e["length"]]
    # A checkpoint block is named by the id its index entry gives it, so later checkpoints can
    # keep it where it lies or copy it unopened; chatvault takes the id from the block's nonce.
    for i, (e, b) in enumerate(zip(index["chats"], k["blocks"])):
        c.check("%s block %d: 16-byte block id, the first 16 bytes of its nonce" % (tag, i),
                len(e["block_id"]) == 16 and e["block_id"] == h(b["nonce"])[:16])
        # Section 9.5: the signed index binds the block's bytes by their SHA-256.
        c.check("%s block %d: hash = SHA-256 of the block's bytes in its pack" % (tag, i),
                e["hash"] == hashlib.sha256(block_bytes(i)).digest())
    check_chat_blocks(c, tag, lambda i: "blocks/" + index["chats"][i]["block_id"].hex(),
                      k["blocks"], block_bytes, vid, keys_by_id, None)
    for i, (e, b) in enumerate(zip(index["chats"], k["blocks"])):
        btag = "%s block %d" % (tag, i)
        c.check(btag + ": index entry names the block's chat and key",
                e["chat_id"] == b["chat_id"] and e["key_id"] == h(b["key_id"]))
        ops = pb_message(h(b["body"]), CHAT_CHECKPOINT)["operations"]
        if e["first"] is None:
            c.check(btag + ": without a range", e["last"] is None)
            continue
        positions = [(op["upsert_message"]["sent_at_ms"], op["upsert_message"]["message_id"])
                     if op["upsert_message"] else None for op in ops]
        c.check(btag + ": a ranged block holds only messages, in history order",
                None not in positions and positions == sorted(positions), repr(positions))
        c.check(btag + ": first and last name its first and last message",
                (e["first"]["sent_at_ms"], e["first"]["message_id"]) == positions[0]
                and (e["last"]["sent_at_ms"], e["last"]["message_id"]) == positions[-1])


def segment_name(device_hex, seq, tag_hex, parent_hex):
    return "segments/%s/%016x-%s-%s" % (device_hex, seq, tag_hex, parent_hex)


def parse_segment_name(name):
    """(device hex, seq, tag, parent tag) of a segment name in the one spelling writers produce
    (FORMAT.md 9.1), or None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "segments":
        return None
    lower_hex = set("0123456789abcdef")
    numbers = parts[2].split("-")
    if len(parts[1]) != 32 or not set(parts[1]) <= lower_hex or len(numbers) != 3:
        return None
    if any(len(n) != 16 or not set(n) <= lower_hex for n in numbers):
        return None
    seq, tag, parent = (int(n, 16) for n in numbers)
    if seq == 0 or tag == 0 or (seq == 1) != (parent == 0):
        return None
    return parts[1], seq, tag, parent


def valid_segment_name(name):
    return parse_segment_name(name) is not None


def check_names(c):
    """The segment name rules of FORMAT.md 9.1, on spellings a listing may show."""
    dev = "ab" * 16
    one, zero = "%016x" % 1, "%016x" % 0
    good = [segment_name(dev, 1, one, zero), segment_name(dev, 2, "%016x" % 7, one)]
    bad = [
        "segments/%s/%s" % (dev, one),                         # untagged (before tags)
        segment_name(dev, 1, zero, zero),                      # zero tag
        segment_name(dev, 1, one, one),                        # parent at seq 1
        segment_name(dev, 2, one, zero),                       # no parent after seq 1
        segment_name(dev, 0, one, zero),                       # seq 0
        segment_name(dev.upper(), 2, one, one),                # upper-case device
        "segments/%s/%s-%s-%s" % (dev, "%016X" % 10, one, one),  # upper-case seq
        "segments/%s/%015x-%s-%s" % (dev, 2, one, one),        # short seq
        "segments/%s/%s-%s-%s-%s" % (dev, "%016x" % 2, one, one, one),
    ]
    for name in good:
        c.check("names: %s parses" % name, valid_segment_name(name))
    for name in bad:
        c.check("names: %s is no segment name" % name, not valid_segment_name(name))


def check_fork(c):
    """The forked-tree vector: both branches' segments open under their names, each names its
    parent by tag and its prev_hash is that parent's SHA-256; `seen` and `covered` hold every tip,
    each head matching a segment's name and hash; no head twice."""
    v = load("sync_objects.json")
    rk = h(v["recovery_key"])
    vid = vault_id(rk)
    log_key = derive(rk, "log")
    fork = v["fork"]
    by_id = {}
    for i, s in enumerate(fork["segments"]):
        tag = "fork segment %d" % i
        name, obj = s["name"], h(s["object"])
        parsed = parse_segment_name(name)
        c.check(tag + ": a valid segment name", parsed is not None, name)
        if parsed is None:
            continue
        device, seq, stag, parent = parsed
        f = s["fields"]
        c.check(tag + ": name spells its device, seq, tag and parent tag",
                (device, seq, "%016x" % stag, "%016x" % parent)
                == (f["device_id"], f["seq"], s["tag"], s["parent_tag"]))
        c.check(tag + ": hash = SHA-256 of the object", hashlib.sha256(obj).hexdigest() == s["hash"])
        body = open_sealed(obj, log_key, KIND_SEGMENT, vid, name)
        nonce = h(s["nonces"][-1])
        c.run(tag + ": re-seal with its nonce reproduces it",
              lambda: seal(log_key, nonce, KIND_SEGMENT, vid, name, body) == obj)
        seg = pb_message(body, SEGMENT)
        c.check(tag + ": body names the same device and seq",
                (seg["device_id"].hex(), seg["seq"]) == (device, seq))
        if seq == 1:
            c.check(tag + ": no prev_hash at seq 1", seg["prev_hash"] == b"")
        else:
            parent_segment = by_id.get((device, seq - 1, parent))
            c.check(tag + ": its parent (by tag) comes before it", parent_segment is not None)
            if parent_segment is not None:
                c.check(tag + ": prev_hash is the parent's SHA-256",
                        seg["prev_hash"].hex() == parent_segment["hash"])
        heads = [(x["device_id"].hex(), x["seq"], x["tag"]) for x in seg["seen"]]
        c.check(tag + ": no head twice in seen", len(heads) == len(set(heads)))
        for x in seg["seen"]:
            seen = by_id.get((x["device_id"].hex(), x["seq"], x["tag"]))
            c.check(tag + ": a seen head names a listed segment and its hash",
                    seen is not None and seen["hash"] == x["hash"].hex())
        c.check(tag + ": seen as in the vector", without_defaults(seg["seen"])
                == without_defaults(f["seen"]))
        c.check(tag + ": body is canonical protobuf", pb_encode(seg, SEGMENT) == body)
        by_id[(device, seq, stag)] = s
    # The tree: two segments 2 of one device after the same segment 1.
    seconds = [k for k in by_id if k[1] == 2]
    c.check("fork: two segments 2 of one device with one parent",
            len(seconds) == 2 and seconds[0][0] == seconds[1][0]
            and len({parse_segment_name(by_id[k]["name"])[3] for k in seconds}) == 1)
    # A device's tips: segments no other segment names as its parent.
    parents = set()
    for (device, seq, _), s in by_id.items():
        p = parse_segment_name(s["name"])
        if seq > 1:
            parents.add((device, seq - 1, p[3]))
    tips = {k for k in by_id if k not in parents}
    k = fork["checkpoint"]
    name, obj = k["name"], h(k["object"])
    body = open_sealed(obj, log_key, KIND_CHECKPOINT_INDEX, vid, name)
    index = decode_checkpoint_index(body)
    c.check("fork checkpoint: name carries its tag",
            name == "checkpoints/%s/%016x-%s" % (index["device_id"].hex(), index["seq"], k["tag"]))
    covered = {(x["device_id"].hex(), x["seq"], x["tag"]) for x in index["covered"]}
    c.check("fork checkpoint: covers every tip, both branches' included", covered == tips,
            "%r vs %r" % (covered, tips))
    for x in index["covered"]:
        listed = by_id.get((x["device_id"].hex(), x["seq"], x["tag"]))
        c.check("fork checkpoint: covered hash is the segment's",
                listed is not None and listed["hash"] == x["hash"].hex())
    c.check("fork checkpoint: covered as in the vector",
            without_defaults(index["covered"]) == without_defaults(k["covered"]))
    for n, p in enumerate(k["packs"]):
        c.check("fork checkpoint pack %d: named packs/<device>/<seq>-<tag>/<n>" % n,
                p["name"] == "packs/%s/%016x-%s/%04d" % (index["device_id"].hex(), index["seq"],
                                                         k["tag"], n))


# docs/DEVICES.md: device keys, key boxes and the link channel.

def x25519(secret, public):
    """X25519 (RFC 7748); libsodium clamps the scalar and refuses an all-zero result."""
    return nacl.bindings.crypto_scalarmult(secret, public)


def x25519_base(secret):
    return nacl.bindings.crypto_scalarmult_base(secret)


def seal_box(ephemeral, recipient, context, plaintext):
    shared = x25519(ephemeral, recipient)
    e = x25519_base(ephemeral)
    key = hkdf(b"chatvault/v2/box", shared, e + recipient + context, 32)
    return e + aead_encrypt(key, bytes(24), context, plaintext)


def open_box(recipient_secret, context, boxed):
    e, sealed = boxed[:32], boxed[32:]
    shared = x25519(recipient_secret, e)
    key = hkdf(b"chatvault/v2/box", shared, e + x25519_base(recipient_secret) + context, 32)
    return aead_decrypt(key, bytes(24), context, sealed)


BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def base32_nopad(data):
    bits, value, out = 0, 0, []
    for byte in data:
        value = (value << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(BASE32[(value >> bits) & 31])
    if bits:
        out.append(BASE32[(value << (5 - bits)) & 31])
    return "".join(out)


def link_offer_bytes(offerer_key, link_id, expires_at_ms, vault_id, app_data):
    return (bytes([1]) + offerer_key + link_id + struct.pack(">Q", expires_at_ms) + vault_id
            + struct.pack(">H", len(app_data)) + app_data)


def link_keys(shared, link_id, offer, joiner_key):
    okm = hkdf(link_id, shared, b"chatvault/v2/link" + offer + joiner_key, 96)
    return okm[0:32], okm[32:64], okm[64:96]


def check_code(check_key):
    digest = hmac.new(check_key, b"chatvault/v2/check-code", hashlib.sha256).digest()
    return "%06d" % (struct.unpack(">Q", digest[:8])[0] % 1000000)


def link_nonce(counter):
    return bytes(16) + struct.pack(">Q", counter)


ROSTER_ADD = {1: ("device_id", "bytes", False), 2: ("agreement_key", "bytes", False),
              3: ("verifying_key", "bytes", False), 4: ("name", "string", False),
              5: ("platform", "string", False), 6: ("first_signed_seq", "uint64", False),
              7: ("unsigned_tips", DEVICE_HEAD, True)}
ROSTER_ENTRY = {1: ("signer", "bytes", False), 2: ("parents", "bytes", True),
                3: ("made_at_ms", "uint64", False), 4: ("epoch", "uint32", False),
                5: ("add", ROSTER_ADD, False)}
SIGNED_ROSTER_ENTRY = {1: ("entry", "bytes", False), 2: ("signature", "bytes", False)}


def ed25519_verifies(public_key, message, signature):
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
        return True
    except Exception:  # noqa: BLE001
        return False


def check_roster(c, v):
    """FORMAT.md section 13: roster entries are named by their hash and signed by their signer
    over the label, the vault id and the entry's bytes."""
    r = v["roster"]
    vault = bytes.fromhex(r["vault_id"])
    seed = hkdf_expand(hkdf_extract(RECOVERY_SALT, bytes.fromhex(r["recovery_key"])),
                       b"chatvault/v2/recovery-signing", 32)
    recovery_pk, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
    c.run("roster: the recovery signing key derives from the recovery key (section 3)",
          lambda: recovery_pk.hex() == r["recovery_verifying_key"])
    keys = {b"": recovery_pk}
    previous = []
    for n, e in enumerate(r["entries"]):
        signed = pb_message(bytes.fromhex(e["body"]), SIGNED_ROSTER_ENTRY)
        entry = pb_message(signed["entry"], ROSTER_ENTRY)
        c.run("roster entry %d: id is the hash of the entry" % n,
              lambda: hashlib.sha256(signed["entry"]).digest()[:16].hex() == e["id"])
        c.run("roster entry %d: canonical encoding" % n,
              lambda: pb_encode(entry, ROSTER_ENTRY) == signed["entry"])
        c.run("roster entry %d: parents are the entries before" % n,
              lambda: [p.hex() for p in entry["parents"]] == previous)
        message = b"chatvault/v2/roster" + vault + signed["entry"]
        c.run("roster entry %d: the signer's signature verifies" % n,
              lambda: ed25519_verifies(keys[entry["signer"]], message, signed["signature"]))
        c.run("roster entry %d: a signature over another vault does not" % n,
              lambda: not ed25519_verifies(keys[entry["signer"]],
                                           b"chatvault/v2/roster" + bytes(16) + signed["entry"],
                                           signed["signature"]))
        if entry["signer"]:
            c.check("roster entry %d: a device adds only the id the added key certifies" % n,
                    entry["add"]["device_id"] == hashlib.sha256(
                        b"chatvault/v2/device-id" + entry["add"]["verifying_key"]).digest()[:16]
                    and entry["add"].get("first_signed_seq", 0) <= 1
                    and not entry["add"]["unsigned_tips"])
        # Unsigned tips: heads of the added device, each below its first signed segment.
        c.check("roster entry %d: unsigned tips are the device's own, below its first signed seq" % n,
                all(t["device_id"] == entry["add"]["device_id"] and 1 <= t["seq"] < entry["add"]["first_signed_seq"]
                    and len(t["hash"]) == 32 and t["tag"] != 0 for t in entry["add"]["unsigned_tips"]))
        keys[entry["add"]["device_id"]] = entry["add"]["verifying_key"]
        previous = [e["id"]]


EPOCH_BOX = {1: ("device_id", "bytes", False), 2: ("box", "bytes", False)}
EPOCH_KEYS = {1: ("epoch", "uint32", False), 2: ("boxes", EPOCH_BOX, True),
              3: ("recovery_box", "bytes", False), 4: ("previous", "bytes", False)}


def check_epoch(c, v):
    """FORMAT.md section 13: an epoch object, rebuilt byte for byte, and opened three ways."""
    e = v["epoch"]
    name = e["name"].encode()
    rk = bytes.fromhex(e["recovery_key"])
    prk = hkdf_extract(b"chatvault/v1", rk)  # epoch 0's secret, which epoch 1 chains
    # The recovery key's X25519 key (section 3): the recovery box is a key box to it.
    recovery_secret = hkdf_expand(hkdf_extract(RECOVERY_SALT, rk), b"chatvault/v2/recovery-agreement", 32)
    recovery_context = b"chatvault/v2/epoch-recovery-box" + name
    secret = bytes.fromhex(e["secret"])
    chain = hkdf_expand(secret, b"chatvault/v2/epoch-chain", 32)
    randomness = [bytes.fromhex(r) for r in e["randomness"]]
    boxes = []
    for n, d in enumerate(e["devices"]):
        device_id = bytes.fromhex(d["device_id"])
        context = b"chatvault/v2/epoch-box" + name + device_id
        boxes.append({"device_id": device_id,
                      "box": seal_box(randomness[n], bytes.fromhex(d["agreement_public"]), context,
                                      secret)})
    k = len(e["devices"])
    chain_nonce = randomness[k + 1][:24]
    body = pb_encode({"epoch": 1, "boxes": boxes,
                      "recovery_box": seal_box(randomness[k], x25519_base(recovery_secret),
                                               recovery_context, secret),
                      "previous": chain_nonce + aead_encrypt(chain, chain_nonce, name, prk)},
                     EPOCH_KEYS)
    obj = bytes.fromhex(e["object"])
    c.run("epoch: object rebuilt byte for byte",
          lambda: b"CVLT" + bytes([2, 0, 10, 1]) + body == obj)
    decoded = pb_message(obj[8:], EPOCH_KEYS)
    for n, d in enumerate(e["devices"]):
        device_secret = bytes.fromhex(d["secret_bytes"])[:32]
        context = b"chatvault/v2/epoch-box" + name + bytes.fromhex(d["device_id"])
        c.run("epoch: device %d opens its box" % n,
              lambda d=d, device_secret=device_secret, context=context, n=n:
              open_box(device_secret, context, decoded["boxes"][n]["box"]) == secret)
    rb = decoded["recovery_box"]
    c.run("epoch: the recovery key opens it",
          lambda: open_box(recovery_secret, recovery_context, rb) == secret)
    c.rejects("epoch: the recovery box does not open as a device's box",
              lambda: open_box(recovery_secret, b"chatvault/v2/epoch-box" + name + bytes(16), rb),
              "tag")
    pv = decoded["previous"]
    c.run("epoch: the chain gives epoch 0's secret, the recovery key's PRK",
          lambda: aead_decrypt(chain, pv[:24], name, pv[24:]) == prk)
    s = e["sealed"]
    log_key = hkdf_expand(secret, b"chatvault/v1/log", 32)
    c.run("epoch: an object sealed in epoch 1 under its log key, version-2 header",
          lambda: seal(log_key, bytes.fromhex(s["nonce"]), s["kind"], bytes.fromhex(s["vault_id"]),
                       s["name"], bytes.fromhex(s["plaintext"]),
                       stored=bytes.fromhex(s["plaintext"]), epoch=1).hex() == s["object"])


def check_epoch_segment(c, v):
    """Section 13: a segment written in epoch 1, its chat key of epoch 1, its attachment under
    epoch 1's attachment key."""
    s = v["epoch_segment"]
    secret = h(s["epoch_secret"])
    vid = h(s["vault_id"])
    obj = h(s["object"])
    name = s["name"]
    log_key = hkdf_expand(secret, b"chatvault/v1/log", 32)
    c.rejects("epoch segment: not a version-1 object", lambda: open_sealed(
        obj, log_key, KIND_SEGMENT, vid, name), "version")
    c.rejects("epoch segment: epoch 0's log key does not open it", lambda: open_sealed(
        obj, derive(h(v["epoch"]["recovery_key"]), "log"), KIND_SEGMENT, vid, name, epoch=1), "tag")
    body = open_sealed(obj, log_key, KIND_SEGMENT, vid, name, epoch=1)
    seg = pb_message(body, SEGMENT)
    grants = seg["keys"]
    c.check("epoch segment: one grant, of key epoch 1", len(grants) == 1 and grants[0]["epoch"] == 1
            and grants[0]["key_id"] == h(s["key_id"]) and grants[0]["key"] == h(s["chat_key"]),
            repr(grants))
    block = seg["chats"][0]
    c.check("epoch segment: the block is under the epoch-1 key", block["key_id"] == h(s["key_id"]))
    # Chat blocks keep version 1 (section 13), under the chat key, named <segment name>#0.
    chat_body = open_sealed(block["sealed"], h(s["chat_key"]), KIND_CHAT_DATA, vid, name + "#0")
    message_schema = dict(MESSAGE)
    message_schema[7] = ("attachments", ATTACHMENT_REF_SCHEMA, True)
    operation_schema = dict(OPERATION)
    operation_schema[3] = ("upsert_message", message_schema, False)
    ops = pb_message(chat_body, {1: ("chat_id", "string", False),
                                 2: ("operations", operation_schema, True)})["operations"]
    ref = ops[0]["upsert_message"]["attachments"][0]
    a = s["attachment"]
    attachment_key = hkdf_expand(secret, b"chatvault/v1/attachment", 32)
    c.check("epoch segment: the attachment names key epoch 1",
            ref["key_epoch"] == a["key_epoch"] == 1, repr(ref))
    c.check("epoch segment: its content id is under epoch 1's attachment key",
            ref["content_id"] == attachment_content_id(attachment_key, a["chunk_size"], h(a["content"]))
            == h(a["content_id"]))
    c.check("epoch segment: epoch 0's attachment key gives another content id",
            attachment_content_id(derive(h(v["epoch"]["recovery_key"]), "attachment"), a["chunk_size"],
                                  h(a["content"])) != ref["content_id"])
    c.run("epoch segment: re-sealed with its nonces, byte for byte",
          lambda: seal(log_key, h(s["nonces"][-1]), KIND_SEGMENT, vid, name, body, epoch=1) == obj)


def check_devices(c):
    v = load("devices.json")
    check_roster(c, v)
    check_epoch(c, v)
    check_epoch_segment(c, v)
    d = v["device"]
    raw = bytes.fromhex(d["secret_bytes"])
    c.run("device: X25519 public key from the first 32 bytes",
          lambda: x25519_base(raw[:32]).hex() == d["agreement_public"])
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(raw[32:])
    c.run("device: Ed25519 public key from the seed (last 32 bytes)",
          lambda: pk.hex() == d["verifying_public"])
    message = bytes.fromhex(d["message"])
    c.run("device: Ed25519 signature (RFC 8032)",
          lambda: nacl.bindings.crypto_sign(message, sk)[:64].hex() == d["signature"])

    b = v["key_box"]
    recipient_secret = bytes.fromhex(b["recipient_secret_bytes"])[:32]
    context, plaintext = bytes.fromhex(b["context"]), bytes.fromhex(b["plaintext"])
    boxed = bytes.fromhex(b["box"])
    c.run("key box: sealed byte for byte",
          lambda: seal_box(bytes.fromhex(b["ephemeral_secret"]), x25519_base(recipient_secret),
                           context, plaintext) == boxed)
    c.run("key box: opens with the recipient's secret",
          lambda: open_box(recipient_secret, context, boxed) == plaintext)
    c.rejects("key box: another context fails",
              lambda: open_box(recipient_secret, context + b"x", boxed))

    k = v["link"]
    a, bsec = bytes.fromhex(k["offerer_ephemeral_secret"]), bytes.fromhex(k["joiner_ephemeral_secret"])
    offerer_key, joiner_key = x25519_base(a), x25519_base(bsec)
    c.run("link: ephemeral public keys",
          lambda: offerer_key.hex() == k["offerer_key"] and joiner_key.hex() == k["joiner_key"])
    offer = link_offer_bytes(offerer_key, bytes.fromhex(k["link_id"]), k["expires_at_ms"],
                             bytes.fromhex(k["vault_id"]), bytes.fromhex(k["app_data"]))
    c.run("link: offer bytes", lambda: offer.hex() == k["offer_bytes"])
    c.run("link: offer text", lambda: "CHATVAULT-LINK:" + base32_nopad(offer) == k["offer_text"])
    link_id = bytes.fromhex(k["link_id"])
    joiner_side = link_keys(x25519(bsec, offerer_key), link_id, offer, joiner_key)
    offerer_side = link_keys(x25519(a, joiner_key), link_id, offer, joiner_key)
    c.run("link: both sides derive the same keys", lambda: joiner_side == offerer_side)
    c.run("link: check code", lambda: check_code(joiner_side[2]) == k["check_code"])
    for m in k["messages"]:
        key = joiner_side[0] if m["from"] == "joiner" else joiner_side[1]
        c.run("link: message %d from the %s" % (m["counter"], m["from"]),
              lambda m=m, key=key: aead_encrypt(key, link_nonce(m["counter"]), link_id,
                                                 bytes.fromhex(m["plaintext"])).hex() == m["sealed"])


def main():
    c = Checker()
    for fn in (check_hkdf, check_aead, check_recovery_key, check_padme, check_sealed,
               crafted_frame_checks, check_attachments, check_sync_objects, check_stamp_bound,
               check_tombstone_places, check_names, check_fork, check_devices):
        try:
            fn(c)
        except Exception as e:  # noqa: BLE001
            c.check(fn.__name__, False, "%s: %s" % (type(e).__name__, e))
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
