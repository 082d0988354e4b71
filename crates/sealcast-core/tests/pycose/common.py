"""Shared helpers of the pycose interoperability scripts.

Everything sealcast-specific here is written from the wire-format
descriptions in sealcast-core's module docs (kdf.rs, groupkey.rs,
broadcast.rs, report.rs, delivery.rs, single.rs) and from RFC 8613 / RFC
9052 / RFC 9053, not from sealcast's code: this is the independent side of
the interoperability tests.

Input is one JSON file (path in argv[1]) with hex-encoded byte fields; the
result is printed to stdout as one JSON object. Any failure raises, so the
process exits non-zero and the Rust test shows the traceback.
"""

import json
import sys
from importlib import metadata

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pycose import algorithms
from pycose.keys import OKPKey, SymmetricKey
from pycose.keys.curves import Ed25519, X25519

# COSE algorithm ids sealcast uses for content encryption.
AEAD_ALGS = {1: algorithms.A128GCM, 3: algorithms.A256GCM}

# sealcast's private-use header labels (cose.rs).
HDR_EPOCH = -70001
HDR_TIMESTAMP = -70002


class Failure(Exception):
    """A check failed: the script exits non-zero with this message."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def u(s):
    return bytes.fromhex(s)


def h(b):
    return b.hex()


def load_input():
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} INPUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        return json.load(f)


def emit(result):
    result["pycose_version"] = metadata.version("pycose")
    result["cbor2_version"] = metadata.version("cbor2")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def aead_alg(alg_id):
    try:
        return AEAD_ALGS[alg_id]
    except KeyError:
        raise Failure(f"unexpected AEAD alg {alg_id}") from None


def hkdf_sha256(salt, ikm, info, length):
    # RFC 5869: an empty salt is the all-zero salt; cryptography's None is that.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def oscore_derive(master_secret, master_salt, ident, id_context, alg_id, kind, length):
    """RFC 8613 section 3.2.1: info = [id, id_context, alg_aead, type, L]."""
    info = cbor2.dumps([ident, id_context, alg_id, kind, length])
    return hkdf_sha256(master_salt, master_secret, info, length)


def partial_iv(seq):
    """RFC 8613 section 6.1: big-endian, no leading zero bytes, at least one byte."""
    return seq.to_bytes(max(1, (seq.bit_length() + 7) // 8), "big")


def oscore_nonce(common_iv, sender_id, piv):
    """RFC 8613 section 5.2, step by step."""
    n = len(common_iv)
    check(len(piv) <= 5 and len(sender_id) <= n - 6, "nonce inputs too long")
    padded_piv = piv.rjust(5, b"\x00")
    padded_id = sender_id.rjust(n - 6, b"\x00")
    plain = bytes([len(sender_id)]) + padded_id + padded_piv
    return bytes(a ^ b for a, b in zip(plain, common_iv))


def x25519(secret, public):
    return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(public))


def x25519_public(secret):
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_public_key(pub):
    return OKPKey(crv=Ed25519, x=pub)


def ed25519_private_key(seed):
    return OKPKey(crv=Ed25519, d=seed)


def x25519_private_key(secret):
    return OKPKey(crv=X25519, d=secret, x=x25519_public(secret))


def x25519_public_key(pub):
    return OKPKey(crv=X25519, x=pub)


def symmetric_key(k):
    return SymmetricKey(k=k)


def describe(exc):
    return f"{type(exc).__name__}: {exc}"
