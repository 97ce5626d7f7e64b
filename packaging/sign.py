#!/usr/bin/env python3
"""Signs berth's packages: minisign's format (Ed25519 over the file's BLAKE2b-512), so that
`berth verify-package` on an instance and `minisign -Vm` anywhere check them.

    packaging/sign.py keygen PUBLIC SECRET     a key pair: PUBLIC (minisign .pub), SECRET (0600)
    packaging/sign.py sign SECRET FILE...      FILE.minisig beside each FILE

Written here rather than installed: it needs only Python's `cryptography` (which moto, in the
test rig, already brings), and minisign itself is not packaged where the builds run. SECRET is
this script's own JSON (key id and seed), never minisign's encrypted secret key.
"""

import base64
import hashlib
import json
import os
import secrets
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def keygen(public_path, secret_path):
    seed = secrets.token_bytes(32)
    key_id = secrets.token_bytes(8)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": key_id.hex(), "seed": seed.hex()}, f)
    with open(public_path, "w") as f:
        f.write(f"untrusted comment: berth release key {key_id[::-1].hex().upper()}\n")
        f.write(base64.b64encode(b"Ed" + key_id + public).decode() + "\n")


def sign(secret_path, path):
    with open(secret_path) as f:
        secret = json.load(f)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret["seed"]))
    key_id = bytes.fromhex(secret["key_id"])
    with open(path, "rb") as f:
        digest = hashlib.blake2b(f.read(), digest_size=64).digest()
    signature = key.sign(digest)
    trusted = f"timestamp:{int(time.time())}\tfile:{os.path.basename(path)}\thashed"
    global_signature = key.sign(signature + trusted.encode())
    with open(path + ".minisig", "w") as f:
        f.write(f"untrusted comment: signature from berth's packaging/sign.py\n")
        f.write(base64.b64encode(b"ED" + key_id + signature).decode() + "\n")
        f.write(f"trusted comment: {trusted}\n")
        f.write(base64.b64encode(global_signature).decode() + "\n")


def main(argv):
    if len(argv) == 3 and argv[0] == "keygen":
        keygen(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "sign":
        for path in argv[2:]:
            sign(argv[1], path)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
