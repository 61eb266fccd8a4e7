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
