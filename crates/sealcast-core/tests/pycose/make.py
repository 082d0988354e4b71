"""Direction B: pycose makes objects for sealcast to open.

Usage: python3 make.py INPUT.json   (prints a JSON result on stdout)

INPUT.json = {"kind": "sign1" | "encrypt_to" | "mac0" | "broadcast", ...}
with hex byte fields; see the handlers below and tests/pycose_interop.rs.

The "broadcast" kind is an independent implementation of sealcast's group
broadcast from its documentation (broadcast.rs, groupkey.rs, kdf.rs module
docs and RFC 8613): key and IV derivation, the context array, the nonce and
both COSE layers are built here with cbor2, cryptography and pycose.
"""

import cbor2
from pycose import algorithms, headers
from pycose.messages import Enc0Message, EncMessage, Mac0Message, Sign1Message
from pycose.messages.enccommon import EncCommon
from pycose.messages.recipient import DirectKeyAgreement

from common import (
    HDR_EPOCH, HDR_TIMESTAMP, aead_alg, describe, ed25519_private_key, emit, h, hkdf_sha256,
    load_input, oscore_derive, oscore_nonce, partial_iv, symmetric_key, u, x25519, x25519_private_key,
    x25519_public, x25519_public_key,
)


def do_sign1(inp):
    msg = Sign1Message(
        phdr={headers.Algorithm: algorithms.EdDSA},
        uhdr={headers.KID: u(inp["kid"])},
        payload=u(inp["payload"]),
        external_aad=u(inp["external_aad"]),
        key=ed25519_private_key(u(inp["seed"])),
    )
    return {"object": h(msg.encode())}


def do_encrypt_to(inp):
    """COSE_Encrypt, one ECDH-ES + HKDF-256 recipient, X25519.

    The ephemeral secret and IV come from the input so the object is
    reproducible. pycose 1.1 cannot do ECDH with OKP keys (see verify.py);
    when its own path fails, the X25519 multiplication and HKDF are done
    here and pycose builds the rest (KDF context, Enc_structure, AES-GCM,
    recipient and message encoding).
    """
    alg = aead_alg(inp["alg"])
    kid = u(inp["kid"])
    peer_public = u(inp["recipient_public"])
    eph_secret = u(inp["ephemeral_secret"])
    eph_public_key = x25519_public_key(x25519_public(eph_secret))

    def build():
        rcpt = DirectKeyAgreement(
            phdr={headers.Algorithm: algorithms.EcdhEsHKDF256},
            uhdr={headers.EphemeralKey: eph_public_key, headers.KID: kid},
        )
        rcpt.local_attrs = {headers.StaticKey: x25519_public_key(peer_public)}
        rcpt.key = x25519_private_key(eph_secret)
        msg = EncMessage(
            phdr={headers.Algorithm: alg},
            uhdr={headers.IV: u(inp["iv"])},
            payload=u(inp["payload"]),
            external_aad=u(inp["external_aad"]),
            recipients=[rcpt],
        )
        return msg, rcpt

    msg, rcpt = build()
    try:
        obj = msg.encode()
        return {"object": h(obj), "ecdh": "pycose", "pycose_ecdh_error": None}
    except Exception as exc:  # pycose 1.1: "Wrong key type" (EC2 only)
        error = describe(exc)

    msg, rcpt = build()
    shared = x25519(eph_secret, peer_public)
    kdf_context = rcpt.get_kdf_context(alg).encode()
    msg.key = symmetric_key(hkdf_sha256(b"", shared, kdf_context, alg.get_key_length()))
    ciphertext = EncCommon.encrypt(msg)
    message = [msg.phdr_encoded, msg.uhdr_encoded, ciphertext, [rcpt.encode(target_alg=alg)]]
    obj = cbor2.dumps(cbor2.CBORTag(EncMessage.cbor_tag, message), default=msg._custom_cbor_encoder)
    return {
        "object": h(obj),
        "ecdh": "x25519 by cryptography, rest by pycose",
        "pycose_ecdh_error": error,
        "kdf_context": h(kdf_context),
    }


def do_mac0(inp):
    msg = Mac0Message(
        phdr={headers.Algorithm: algorithms.HMAC256},
        uhdr={headers.KID: u(inp["kid"])},
        payload=u(inp["payload"]),
        external_aad=u(inp["external_aad"]),
        key=symmetric_key(u(inp["key"])),
    )
    return {"object": h(msg.encode())}


def broadcast_context(group_id, epoch, sender_id, seq, timestamp, target):
    """broadcast.rs: [ "sealcast broadcast v1", group_id, epoch, sender_id, seq, timestamp_ms, target ]."""
    return cbor2.dumps(["sealcast broadcast v1", group_id, epoch, sender_id, seq, timestamp, target])


def do_broadcast(inp):
    alg_id = inp["alg"]
    alg = aead_alg(alg_id)
    master_secret, master_salt = u(inp["master_secret"]), u(inp["master_salt"])
    group_id, epoch = u(inp["group_id"]), inp["epoch"]
    # groupkey.rs: ID Context = group id; the common IV has an empty id.
    common_iv = oscore_derive(master_secret, master_salt, b"", group_id, alg_id, "IV", 12)
    out = []
    for m in inp["messages"]:
        sid, seq, ts, target = u(m["sender_id"]), m["seq"], m["timestamp"], m["target"]
        sender_key = oscore_derive(master_secret, master_salt, sid, group_id, alg_id, "Key", alg.get_key_length())
        piv = partial_iv(seq)
        nonce = oscore_nonce(common_iv, sid, piv)
        context = broadcast_context(group_id, epoch, sid, seq, ts, target)

        inner = Sign1Message(
            phdr={headers.Algorithm: algorithms.EdDSA},
            uhdr={headers.KID: sid},
            payload=u(m["payload"]),
            external_aad=context,
            key=ed25519_private_key(u(m["signer_seed"])),
        ).encode()

        uhdr = {
            headers.KID: sid,
            headers.PartialIV: piv,
            headers.KIDContext: group_id,
            HDR_EPOCH: epoch,
            HDR_TIMESTAMP: ts,
        }
        outer = Enc0Message(
            phdr={headers.Algorithm: alg},
            uhdr={**uhdr, headers.IV: nonce},
            payload=inner,
            external_aad=context,
            key=symmetric_key(sender_key),
        )
        ciphertext = outer.encrypt()
        # The nonce is implicit (RFC 8613): it must not travel as an IV header.
        outer.uhdr = uhdr
        outer.payload = ciphertext
        obj = outer.encode(encrypt=False)
        out.append({
            "object": h(obj),
            "inner": h(inner),
            "context": h(context),
            "sender_key": h(sender_key),
            "nonce": h(nonce),
        })
    return {"common_iv": h(common_iv), "messages": out}


HANDLERS = {
    "sign1": do_sign1,
    "encrypt_to": do_encrypt_to,
    "mac0": do_mac0,
    "broadcast": do_broadcast,
}


def main():
    inp = load_input()
    emit(HANDLERS[inp["kind"]](inp))


if __name__ == "__main__":
    main()
