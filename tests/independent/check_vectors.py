#!/usr/bin/env python3
"""An independent implementation of the chatvault format (docs/FORMAT.md), in Python, checked
against tests/vectors/*.json. It shares no code with the Rust crate: it is evidence that the
specification alone is enough to read and write the format.

Run: `$(bash scripts/python-env.sh | tail -1) tests/independent/check_vectors.py`
"""
import hashlib
import hmac
import json
import os
import sys
import unicodedata

import argon2.low_level
import nacl.bindings as sodium
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "vectors")
passed = failed = 0


def check(condition, what):
    global passed, failed
    if condition:
        passed += 1
    else:
        failed += 1
        print("FAILED:", what)


def load(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)


# ---- 1. primitives ---------------------------------------------------------------------------

def hkdf(ikm, salt, info, length):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def aead_encrypt(key, nonce, aad, plaintext):
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def aead_decrypt(key, nonce, aad, ciphertext):
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)


# ---- 2. recovery key text -------------------------------------------------------------------

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def gf_mul(a, b):
    p = 0
    while b:
        if b & 1:
            p ^= a
        b >>= 1
        a <<= 1
        if a & 0x20:
            a ^= 0x25
    return p


def gf_pow(a, n):
    r = 1
    for _ in range(n % 31):
        r = gf_mul(r, a)
    return r


def gf_inv(a):
    return gf_pow(a, 30)


def syndromes(symbols):
    s1 = s2 = 0
    for i, s in enumerate(symbols):
        s1 ^= s
        s2 ^= gf_mul(gf_pow(2, i), s)
    return s1, s2


def key_to_text(key):
    bits = int.from_bytes(key, "big") << 4 | 1  # 256 key bits, then version 0001
    data = [(bits >> (5 * (51 - i))) & 31 for i in range(52)]
    s1, s2 = syndromes(data)
    c1 = gf_mul(s2 ^ gf_mul(gf_pow(2, 53), s1), gf_inv(gf_mul(gf_pow(2, 52), 1 ^ 2)))
    symbols = data + [c1, s1 ^ c1]
    text = "".join(ALPHABET[s] for s in symbols)
    return "-".join(text[i:i + 6] for i in range(0, 54, 6))


def parse_text(text):
    """Returns (bytes, None) or (None, reason)."""
    symbols = []
    for ch in text:
        if ch.isspace() or ch == "-":
            continue
        up = {"O": "0", "I": "1", "L": "1"}.get(ch.upper(), ch.upper())
        if len(up) != 1 or up not in ALPHABET:
            return None, "invalid_character"
        symbols.append(ALPHABET.index(up))
    if len(symbols) != 54:
        return None, "wrong_length"
    if syndromes(symbols) != (0, 0):
        return None, "checksum_mismatch"
    bits = 0
    for s in symbols[:52]:
        bits = bits << 5 | s
    if bits & 15 != 1:
        return None, "unsupported_version"
    return (bits >> 4).to_bytes(32, "big"), None


# ---- 3-6. key tree, padding, sealed objects -------------------------------------------------

SALT = b"chatvault/v1"


def derive(recovery_key, label, length=32):
    return hkdf(recovery_key, SALT, ("chatvault/v1/" + label).encode(), length)


def padme(length):
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def header(kind):
    return b"CVLT" + bytes([1, 1, kind, 0])


def aad_for(head, vault_id, name):
    name = name.encode()
    return head + vault_id + len(name).to_bytes(4, "big") + name


def open_sealed(key, vault_id, kind, name, obj):
    """Opens a sealed object (FORMAT.md section 6), enforcing every reader rule."""
    if len(obj) > 64 * 1024 * 1024 or len(obj) < 57:
        raise ValueError("size")
    if obj[:8] != header(kind):
        raise ValueError("header")
    frame = aead_decrypt(key, obj[8:32], aad_for(obj[:8], vault_id, name), obj[32:])
    method = frame[0]
    plain_len = int.from_bytes(frame[1:5], "big")
    stored_len = int.from_bytes(frame[5:9], "big")
    if 9 + stored_len > len(frame) or plain_len > 56 * 1024 * 1024:
        raise ValueError("lengths")
    if any(frame[9 + stored_len:]):
        raise ValueError("padding")
    if len(obj) != padme(57 + stored_len):
        raise ValueError("padded size")
    stored = frame[9:9 + stored_len]
    if method == 0 and plain_len == stored_len:
        return stored
    if method == 1:
        body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=plain_len)
        if len(body) != plain_len:
            raise ValueError("zstd length")
        return body
    raise ValueError("compression")


def seal(key, vault_id, kind, name, stored, plain_len, method, nonce):
    """The writer's side, to reproduce vectors byte for byte."""
    total = padme(57 + len(stored))
    frame = bytes([method]) + plain_len.to_bytes(4, "big") + len(stored).to_bytes(4, "big") + stored
    frame += bytes(total - 48 - len(frame))
    head = header(kind)
    return head + nonce + aead_encrypt(key, nonce, aad_for(head, vault_id, name), frame)


# ---- minimal protobuf reader ----------------------------------------------------------------

def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(buf):
    """Yields (field number, value) for varint and length-delimited fields."""
    i = 0
    while i < len(buf):
        tag, i = varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            length, i = varint(buf, i)
            value, i = bytes(buf[i:i + length]), i + length
        else:
            raise ValueError("unexpected wire type %d" % wire)
        yield number, value


# ---- the checks -------------------------------------------------------------------------------

def check_hkdf():
    for case in load("hkdf.json"):
        okm = hkdf(bytes.fromhex(case["ikm"]), bytes.fromhex(case["salt"]),
                   bytes.fromhex(case["info"]), case["length"])
        check(okm.hex() == case["okm"], "hkdf " + bytes.fromhex(case["info"]).decode())


def check_aead():
    for case in load("aead.json"):
        key, nonce, aad, pt = (bytes.fromhex(case[k]) for k in ("key", "nonce", "aad", "plaintext"))
        ct = aead_encrypt(key, nonce, aad, pt)
        check(ct.hex() == case["ciphertext"], "aead encrypt")
        check(aead_decrypt(key, nonce, aad, ct) == pt, "aead decrypt")


def check_recovery_keys():
    vectors = load("recovery_key.json")
    for case in vectors["valid"]:
        key = bytes.fromhex(case["bytes"])
        check(key_to_text(key) == case["text"], "encode " + case["text"])
        check(parse_text(case["text"]) == (key, None), "parse " + case["text"])
    for case in vectors["lenient"]:
        check(parse_text(case["text"]) == (bytes.fromhex(case["bytes"]), None), "lenient " + case["text"])
    for case in vectors["invalid"]:
        check(parse_text(case["text"]) == (None, case["reason"]),
              "reject %r as %s, got %s" % (case["text"], case["reason"], parse_text(case["text"])))


def check_sealed_objects():
    chat_keys = {}
    for case in load("sealed_objects.json"):
        rk = bytes.fromhex(case["recovery_key"])
        vault_id = derive(rk, "vault-id", 16)
        check(vault_id.hex() == case["vault_id"], "vault id")
        check(key_to_text(rk) == case["recovery_key_text"], "recovery key text")
        obj = bytes.fromhex(case["object"])
        plaintext = bytes.fromhex(case["plaintext"])
        nonce = bytes.fromhex(case["nonce"])
        kind = case["kind"]
        if kind in (1, 2):
            key = bytes.fromhex(case["key"])
            if kind == 1:
                check(derive(rk, "keyring") == key, "keyring key derivation")
            else:
                check(chat_keys.get(case["chat_id"]) == key, "chat key comes from the keyring")
            body = open_sealed(key, vault_id, kind, case["name"], obj)
            check(body == plaintext, "open " + case["description"])
            # Re-seal: the stored form is whatever the frame says; rebuild it from the object.
            frame = aead_decrypt(key, nonce, aad_for(obj[:8], vault_id, case["name"]), obj[32:])
            stored = frame[9:9 + int.from_bytes(frame[5:9], "big")]
            again = seal(key, vault_id, kind, case["name"], stored, len(plaintext), frame[0], nonce)
            check(again == obj, "reproduce " + case["description"])
            if frame[0] == 0:
                check(stored == plaintext, "uncompressed frame holds the body")
            if kind == 1:
                ids = []
                for number, entry in fields(body):
                    if number == 2:
                        parts = dict(fields(entry))
                        chat_keys[parts[1].decode()] = parts[2]
                        ids.append(parts[1].decode())
                expected = [c["chat_id"] for c in case["chat_keys"]]
                check(ids == expected, "keyring chat ids")
                check(all(chat_keys[c["chat_id"]].hex() == c["key"] for c in case["chat_keys"]),
                      "keyring chat keys")
            for i in (0, 8, 31, 40, len(obj) - 1):
                tampered = bytearray(obj)
                tampered[i] ^= 1
                try:
                    open_sealed(key, vault_id, kind, case["name"], bytes(tampered))
                    check(False, "tampered byte %d accepted" % i)
                except Exception:
                    check(True, "tampered byte rejected")
            try:
                open_sealed(key, vault_id, kind, case["name"] + "x", obj)
                check(False, "object accepted under another name")
            except Exception:
                check(True, "other name rejected")
        elif kind == 3:
            check(obj[:8] == header(3), "envelope header")
            env = dict(fields(obj[8:]))
            kdf = dict(fields(env[1]))
            m, t, p, salt = kdf[1], kdf[2], kdf[3], kdf[4]
            params = case["argon2id"]
            check((m, t, p, salt.hex()) == (params["memory_kib"], params["iterations"],
                                            params["parallelism"], params["salt"]), "argon2 params")
            check(env[2] == nonce, "envelope nonce")
            aad = header(3) + vault_id + m.to_bytes(4, "big") + t.to_bytes(4, "big") \
                + p.to_bytes(4, "big") + bytes([len(salt)]) + salt

            def kek(passphrase):
                return argon2.low_level.hash_secret_raw(
                    unicodedata.normalize("NFC", passphrase).encode(), salt, time_cost=t,
                    memory_cost=m, parallelism=p, hash_len=32, type=argon2.low_level.Type.ID,
                    version=19)
            check(aead_decrypt(kek(case["passphrase"]), env[2], aad, env[3]) == plaintext,
                  "passphrase envelope opens")
            check(aead_encrypt(kek(case["passphrase"]), env[2], aad, plaintext) == env[3],
                  "passphrase envelope reproduces")
            try:
                aead_decrypt(kek(case["passphrase"] + "!"), env[2], aad, env[3])
                check(False, "wrong passphrase accepted")
            except Exception:
                check(True, "wrong passphrase rejected")
        else:
            check(False, "unknown kind %d" % kind)


def main():
    for step in (check_hkdf, check_aead, check_recovery_keys, check_sealed_objects):
        try:
            step()
        except Exception as error:  # a crash in one step is a failure, not a stop
            check(False, "%s raised %r" % (step.__name__, error))
    print("python: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
