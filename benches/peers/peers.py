#!/usr/bin/env python3
"""Peers measured in the same run as sealcast (not run by CI).

1. pycose opens the very broadcasts sealcast sealed (decode the COSE_Encrypt0,
   AES-GCM with the RFC 8613 nonce, decode the inner COSE_Sign1, Ed25519
   verify), one after the other on one core.
2. aiocoap unprotects Group OSCORE group-mode requests (Ed25519 countersignature,
   A128GCM group encryption, in-process, no network), one core.
3. sealcast itself: `sealcast bench --json` in the same run; its open rate
   (decode, AEAD, strict verify, replay window) is compared with each peer.

Rates use process CPU time (time.process_time), sealcast's its thread CPU time,
so other load on a shared machine does not count against either.

Usage (from the repository root, after `cargo build --release`):
    python3 benches/peers/peers.py [--sealcast target/release/sealcast] [--quick] [--seconds 3]

Needs: pycose, cbor2, cryptography, aiocoap (pip install pycose aiocoap).
Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The RFC 8613 derivation and nonce helpers the interop tests already use.
sys.path.insert(0, os.path.join(ROOT, "crates", "sealcast-core", "tests", "pycose"))

import cbor2  # noqa: E402
from pycose import headers  # noqa: E402
from pycose.messages import CoseMessage  # noqa: E402

from common import ed25519_public_key, oscore_derive, oscore_nonce, partial_iv, symmetric_key  # noqa: E402

TARGET = "site-4/fire/alarm"
SIGNER = "alarm-panel-1"
EPOCH_LABEL, TIMESTAMP_LABEL, KID_CONTEXT = -70001, -70002, 10


def run(cmd, cwd, stdin=b""):
    out = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {out.stderr.decode(errors='replace')}")
    return out.stdout


def rate(fn, seconds):
    """Calls fn() (which returns how many operations it did) for `seconds` of CPU time."""
    fn()  # warm-up
    start = time.process_time()
    ops = 0
    while time.process_time() - start < seconds:
        ops += fn()
    return ops / (time.process_time() - start)


# ---------------------------------------------------------------------------
# pycose opening sealcast broadcasts
# ---------------------------------------------------------------------------


def make_broadcasts(sealcast, workdir, count):
    run([sealcast, "keygen", "--id", SIGNER], workdir)
    run([sealcast, "group", "create", "--group", "fire-site-4", "--epoch", "1",
         "--signer", f"{SIGNER}={SIGNER}.pub:01", "--valid-for", "30d", "--out", "g.gk"], workdir)
    msgs = []
    for i in range(count):
        out = os.path.join(workdir, f"m{i}.cose")
        run([sealcast, "seal", "--group-key", "g.gk", "--key", f"{SIGNER}.key", "--target", TARGET,
             "--seq-state", f"{SIGNER}.seq", "--out", out], workdir, stdin=bytes(100))
        with open(out, "rb") as f:
            msgs.append(f.read())
    with open(os.path.join(workdir, "g.gk"), "rb") as f:
        material = cbor2.loads(f.read())
    return material, msgs


def pycose_opener(material, msgs):
    group, alg, secret, salt = material[1], material[3], material[4], material[5]
    signers = {sid: pk for sid, _entity, pk in material[6]}
    key_len = 16 if alg == 1 else 32
    common_iv = oscore_derive(secret, salt, b"", group, alg, "IV", 12)
    sender_keys = {sid: oscore_derive(secret, salt, sid, group, alg, "Key", key_len) for sid in signers}
    public = {sid: ed25519_public_key(pk) for sid, pk in signers.items()}
    aead_keys = {sid: symmetric_key(k) for sid, k in sender_keys.items()}

    def label(bucket, want):
        # pycose turns registered labels (10 = kid context) into attribute
        # objects and keeps unknown ones as ints.
        for k, v in bucket.items():
            if getattr(k, "identifier", k) == want:
                return v
        raise KeyError(want)

    def open_one(obj):
        outer = CoseMessage.decode(obj)
        sid = outer.uhdr[headers.KID]
        piv = outer.uhdr[headers.PartialIV]
        seq = int.from_bytes(piv, "big")
        context = cbor2.dumps(["sealcast broadcast v1", label(outer.uhdr, KID_CONTEXT),
                               label(outer.uhdr, EPOCH_LABEL), sid, seq, label(outer.uhdr, TIMESTAMP_LABEL),
                               TARGET])
        # pycose builds only RFC 9052 nonces (Base IV xor Partial IV), so the
        # RFC 8613 nonce goes in as the IV (as tests/pycose/verify.py does).
        outer.uhdr_update({headers.IV: oscore_nonce(common_iv, sid, partial_iv(seq))})
        outer.key = aead_keys[sid]
        outer.external_aad = context
        inner = CoseMessage.decode(outer.decrypt())
        inner.key = public[sid]
        inner.external_aad = context
        if not inner.verify_signature():
            raise RuntimeError("pycose: signature did not verify")
        return inner.payload

    def open_all():
        for m in msgs:
            open_one(m)
        return len(msgs)

    return open_all


# ---------------------------------------------------------------------------
# aiocoap Group OSCORE, group mode
# ---------------------------------------------------------------------------


def aiocoap_unprotector(count):
    from aiocoap import GET, Message, oscore
    from aiocoap.numbers.types import Type

    sig = oscore.algorithms_countersign["EdDSA on Ed25519"]
    priv_a, ccs_a = sig.generate_with_ccs()
    priv_b, ccs_b = sig.generate_with_ccs()
    _gm, ccs_gm = sig.generate_with_ccs()
    group = dict(
        alg_aead=oscore.algorithms["AES-CCM-16-64-128"],
        hashfun=oscore.hashfunctions["sha256"],
        alg_signature=sig,
        alg_group_enc=oscore.algorithms["A128GCM"],
        alg_pairwise_key_agreement=oscore.algorithms_staticstatic["ECDH-SS + HKDF-256"],
        group_id=b"fire-site-4",
        master_secret=bytes(range(16)),
        master_salt=b"sealcast",
        group_manager_cred=ccs_gm,
    )
    sender = oscore.SimpleGroupContext(sender_id=b"\x01", private_key=priv_a, sender_auth_cred=ccs_a,
                                       peers={b"\x02": ccs_b}, **group)
    wire = []
    for i in range(count):
        protected, _ = sender.protect(Message(code=GET, uri="coap://localhost/alarm", payload=bytes(100)))
        protected.mtype, protected.mid = Type.NON, i
        wire.append(protected.encode())

    def unprotect_all():
        # A fresh receiver per pass: its replay window has not seen these yet.
        receiver = oscore.SimpleGroupContext(sender_id=b"\x02", private_key=priv_b, sender_auth_cred=ccs_b,
                                             peers={b"\x01": ccs_a}, **group)
        for w in wire:
            msg = Message.decode(w)
            ctx = receiver.get_oscore_context_for(oscore.verify_start(msg))
            plain, _ = ctx.unprotect(msg)
            if plain.payload != bytes(100):
                raise RuntimeError("aiocoap: wrong payload")
        return len(wire)

    return unprotect_all


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sealcast", default=os.path.join(ROOT, "target", "release", "sealcast"))
    ap.add_argument("--quick", action="store_true", help="pass --quick to sealcast bench")
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per peer")
    ap.add_argument("--messages", type=int, default=64)
    args = ap.parse_args()

    bench = ["bench", "--json"] + (["--quick"] if args.quick else [])
    sc = json.loads(run([args.sealcast] + bench, ROOT))
    with tempfile.TemporaryDirectory() as d:
        material, msgs = make_broadcasts(args.sealcast, d, args.messages)
    pycose_rate = rate(pycose_opener(material, msgs), args.seconds)
    aiocoap_rate = rate(aiocoap_unprotector(args.messages), args.seconds)

    result = {
        "backend": sc["backend"],
        "profile": sc["profile"],
        "sealcast_open_per_sec": sc["open_per_sec"],
        "pycose_open_per_sec": pycose_rate,
        "aiocoap_group_unprotect_per_sec": aiocoap_rate,
        "sealcast_vs_pycose": sc["open_per_sec"] / pycose_rate,
        "sealcast_vs_aiocoap": sc["open_per_sec"] / aiocoap_rate,
        "sealcast_burst64_open_per_sec": sc["burst64_open_per_sec"],
        "sealcast_burst64_vs_aiocoap": sc["burst64_open_per_sec"] / aiocoap_rate,
    }
    print(f"sealcast open (100 B, {sc['backend']}, {sc['profile']}): {sc['open_per_sec']:10.0f} /s per core")
    print(f"pycose open of the same broadcasts:        {pycose_rate:10.0f} /s  -> sealcast {result['sealcast_vs_pycose']:.1f}x (target >= 8x)")
    print(f"aiocoap Group OSCORE group-mode unprotect: {aiocoap_rate:10.0f} /s  -> sealcast {result['sealcast_vs_aiocoap']:.1f}x (target >= 8x)")
    print(f"sealcast burst open of 64 (one batch verification): {sc['burst64_open_per_sec']:10.0f} /s  "
          f"-> {result['sealcast_burst64_vs_aiocoap']:.1f}x aiocoap")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
