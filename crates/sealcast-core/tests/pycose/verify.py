"""Direction A: pycose verifies and decrypts objects that sealcast made.

Usage: python3 verify.py INPUT.json   (prints a JSON result on stdout)

INPUT.json = {"kind": "broadcast" | "report" | "delivery" | "encrypt_to" | "mac0", ...}
with hex byte fields; see the handlers below and tests/pycose_interop.rs.
"""

from cryptography.exceptions import InvalidTag
from pycose import algorithms, headers
from pycose.keys import CoseKey
from pycose.keys.curves import X25519
from pycose.messages import CoseMessage, Enc0Message, EncMessage, Mac0Message, Sign1Message
from pycose.messages.enccommon import EncCommon

import cbor2

from common import (
    Failure, aead_alg, check, describe, ed25519_public_key, emit, h, hkdf_sha256, load_input,
    oscore_derive, oscore_nonce, symmetric_key, u, x25519, x25519_private_key,
)


def flip(b):
    """The same bytes with the last bit flipped (b must not be empty)."""
    return b[:-1] + bytes([b[-1] ^ 1])


def header_json(bucket):
    """A header bucket as {label: value}, bytes as hex, algorithms as ids."""
    out = {}
    for k, v in bucket.items():
        label = k.identifier if hasattr(k, "identifier") else k
        if isinstance(v, bytes):
            v = h(v)
        elif hasattr(v, "identifier"):
            v = v.identifier
        elif isinstance(v, dict):
            v = {str(getattr(a, "identifier", a)): (h(b) if isinstance(b, bytes) else getattr(b, "identifier", b))
                 for a, b in v.items()}
        out[str(label)] = v
    return out


def describe_msg(msg):
    return {
        "protected": h(msg.phdr_encoded),
        "phdr": header_json(msg.phdr),
        "uhdr": header_json(msg.uhdr),
    }


def decode(obj, cls):
    msg = CoseMessage.decode(obj)
    check(isinstance(msg, cls), f"expected {cls.__name__}, pycose decoded {type(msg).__name__}")
    return msg


def verify_sign1(obj, pub, aad):
    """pycose verifies an EdDSA COSE_Sign1; also checks a changed external_aad fails."""
    msg = decode(obj, Sign1Message)
    check(msg.get_attr(headers.Algorithm) is algorithms.EdDSA, "Sign1 alg is not EdDSA")
    msg.key = ed25519_public_key(pub)
    msg.external_aad = aad
    check(msg.verify_signature(), "pycose: Sign1 signature does not verify")
    msg.external_aad = flip(aad)
    check(not msg.verify_signature(), "pycose: Sign1 verified under a changed external_aad")
    msg.external_aad = aad
    return msg


def decrypt_encrypt0(obj, key, nonce, aad):
    """pycose decrypts a COSE_Encrypt0 with the full AEAD nonce given as IV.

    pycose builds nonces only as RFC 9052 section 3.1 Base IV xor Partial IV,
    not OSCORE's, so the nonce (computed by the caller) goes in as the IV
    attribute of the unprotected bucket (unprotected: not in the AAD).
    """
    msg = decode(obj, Enc0Message)
    check(msg.get_attr(headers.IV) is None, "Encrypt0 carries an IV header")
    described = describe_msg(msg)
    msg.uhdr_update({headers.IV: nonce})
    msg.key = symmetric_key(key)
    msg.external_aad = flip(aad)
    try:
        msg.decrypt()
        raise Failure("pycose: Encrypt0 decrypted under a changed external_aad")
    except InvalidTag:
        pass
    msg.external_aad = aad
    return msg.decrypt(), described


def decrypt_encrypt(obj, own_kid, own_secret, aad):
    """pycose decrypts a COSE_Encrypt with one ECDH-ES + HKDF-256 recipient.

    First pycose's own ECDH-ES path is tried. pycose 1.1 implements ECDH only
    for EC2 keys (DirectKeyAgreement.compute_cek insists on EC2Key, and
    _EcdhHkdf._ecdh reads x/y coordinates), so for X25519 it fails; then only
    the X25519 scalar multiplication and the HKDF call are done here, and
    pycose supplies everything else: parsing, recipient lookup, the
    COSE_KDF_Context (Recipient.get_kdf_context), Enc_structure and AES-GCM.
    """
    msg = decode(obj, EncMessage)
    matches = [r for r in msg.recipients if r.get_attr(headers.KID) == own_kid]
    check(len(matches) == 1, f"expected one recipient with our kid, found {len(matches)}")
    rcpt = matches[0]
    check(rcpt.get_attr(headers.Algorithm) is algorithms.EcdhEsHKDF256, "recipient alg is not ECDH-ES+HKDF-256")
    eph_key = rcpt.get_attr(headers.EphemeralKey)  # parsed by pycose (CoseKey.from_dict)
    check(isinstance(eph_key, CoseKey), "no ephemeral COSE_Key in the recipient")
    check(eph_key.crv is X25519, f"ephemeral key curve is {eph_key.crv}, not X25519")
    target = msg.get_attr(headers.Algorithm)
    msg.external_aad = aad
    info = {
        "protected": h(msg.phdr_encoded),
        "recipient_protected": h(rcpt.phdr_encoded),
        "alg": target.identifier,
    }
    try:
        rcpt.key = x25519_private_key(own_secret)
        plaintext = msg.decrypt(rcpt)
        info["ecdh"] = "pycose"
        info["pycose_ecdh_error"] = None
    except InvalidTag:
        raise
    except Exception as exc:  # pycose 1.1: "Wrong key type" (EC2 only)
        info["ecdh"] = "x25519 by cryptography, rest by pycose"
        info["pycose_ecdh_error"] = describe(exc)
        shared = x25519(own_secret, eph_key.x)
        kdf_context = rcpt.get_kdf_context(target).encode()
        info["kdf_context"] = h(kdf_context)
        cek = hkdf_sha256(b"", shared, kdf_context, target.get_key_length())
        msg.key = symmetric_key(cek)
        msg.external_aad = flip(aad)
        try:
            EncCommon.decrypt(msg)
            raise Failure("pycose: Encrypt decrypted under a changed external_aad")
        except InvalidTag:
            pass
        msg.external_aad = aad
        plaintext = EncCommon.decrypt(msg)
    return plaintext, info


def do_broadcast(inp):
    out = []
    for case in inp["cases"]:
        aad = u(case["external_aad"])
        plaintext, outer = decrypt_encrypt0(u(case["object"]), u(case["key"]), u(case["nonce"]), aad)
        inner = verify_sign1(plaintext, u(case["signer_public"]), aad)
        out.append({"outer": outer, "inner": describe_msg(inner), "payload": h(inner.payload)})
    return {"cases": out}


def do_report(inp):
    aad = u(inp["external_aad"])
    outer = verify_sign1(u(inp["object"]), u(inp["reporter_public"]), aad)
    # Independent derivation of the pairwise key from the report.rs docs:
    # HKDF(salt = "", IKM = X25519(reporter, headend), info = [reporter, headend, alg, type, L]).
    # A refreshed association (epoch n >= 1): IKM = X25519(reporter, headend)
    # || X25519(reporter, headend's ephemeral), salt = n as 4 bytes big-endian.
    alg_id = inp["alg"]
    shared = x25519(u(inp["reporter_x25519_secret"]), u(inp["headend_x25519_public"]))
    salt = b""
    epoch = inp.get("epoch", 0)
    if epoch:
        shared += x25519(u(inp["reporter_x25519_secret"]), u(inp["headend_ephemeral_public"]))
        salt = epoch.to_bytes(4, "big")
    reporter, headend = inp["reporter"].encode(), inp["headend"].encode()
    key_len = aead_alg(alg_id).get_key_length()
    own_key = oscore_derive(shared, salt, reporter, headend, alg_id, "Key", key_len)
    own_iv = oscore_derive(shared, salt, reporter, headend, alg_id, "IV", 12)
    piv = outer.get_attr(headers.PartialIV)
    own_nonce = oscore_nonce(own_iv, b"", piv)
    # pycose decrypts with the key and nonce sealcast says it used ...
    reading, inner = decrypt_encrypt0(outer.payload, u(inp["key"]), u(inp["nonce"]), aad)
    # ... and with the ones derived here.
    reading2, _ = decrypt_encrypt0(outer.payload, own_key, own_nonce, aad)
    check(reading == reading2, "independently derived pairwise key gives another plaintext")
    return {
        "outer": describe_msg(outer),
        "inner": inner,
        "reading": h(reading),
        "derived_key": h(own_key),
        "derived_nonce": h(own_nonce),
    }


def do_delivery(inp):
    aad = u(inp["external_aad"])
    outer = verify_sign1(u(inp["object"]), u(inp["manager_public"]), aad)
    plaintext, info = decrypt_encrypt(outer.payload, u(inp["recipient_kid"]), u(inp["recipient_secret"]), aad)
    m = cbor2.loads(plaintext)
    check(isinstance(m, dict) and sorted(m) == [1, 2, 3, 4, 5, 6, 7], f"key material map keys {sorted(m)}")
    material = {
        "group": h(m[1]),
        "epoch": m[2],
        "alg": m[3],
        "master_secret": h(m[4]),
        "master_salt": h(m[5]),
        "signers": [[h(sid), entity, h(pk)] for sid, entity, pk in m[6]],
        "not_after": m[7],
    }
    return {"outer": describe_msg(outer), "inner": info, "plaintext": h(plaintext), "material": material}


def do_encrypt_to(inp):
    plaintext, info = decrypt_encrypt(u(inp["object"]), u(inp["kid"]), u(inp["secret"]), u(inp["external_aad"]))
    return {"inner": info, "plaintext": h(plaintext)}


def do_mac0(inp):
    msg = decode(u(inp["object"]), Mac0Message)
    check(msg.get_attr(headers.Algorithm) is algorithms.HMAC256, "Mac0 alg is not HMAC 256/256")
    msg.key = symmetric_key(u(inp["key"]))
    msg.external_aad = u(inp["external_aad"])
    check(msg.verify_tag(), "pycose: Mac0 tag does not verify")
    msg.external_aad = flip(u(inp["external_aad"]))
    check(not msg.verify_tag(), "pycose: Mac0 verified under a changed external_aad")
    return {"mac0": describe_msg(msg), "payload": h(msg.payload)}


def do_token(inp):
    """A broadcast carrying its signer's access token (docs/ARCHITECTURE.md,
    "Access-control tokens"): pycose opens the broadcast, takes the token
    from the inner protected header (label -70010), verifies it with the
    manager's key under the token label, and cbor2 decodes its claims."""
    aad = u(inp["external_aad"])
    plaintext, outer = decrypt_encrypt0(u(inp["object"]), u(inp["key"]), u(inp["nonce"]), aad)
    inner = verify_sign1(plaintext, u(inp["signer_public"]), aad)
    token = inner.phdr.get(-70010)
    check(isinstance(token, bytes), "no access token (-70010, bstr) in the inner protected header")
    signed = verify_sign1(token, u(inp["manager_public"]), inp["label"].encode())
    check(signed.phdr_encoded == bytes.fromhex("a10127"), "token protected header is not {1: -8}")
    claims = cbor2.loads(signed.payload)
    check(isinstance(claims, dict) and sorted(claims) == [1, 2, 4, 5, 6, 7, 9], f"claims keys {sorted(claims)}")

    def plain(v):
        if isinstance(v, bytes):
            return {"bstr": h(v)}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {
        "payload": h(inner.payload),
        "inner": describe_msg(inner),
        "kid": h(signed.uhdr.get(headers.KID) or b""),
        "claims": {str(k): plain(v) for k, v in claims.items()},
    }


HANDLERS = {
    "token": do_token,
    "broadcast": do_broadcast,
    "report": do_report,
    "delivery": do_delivery,
    "encrypt_to": do_encrypt_to,
    "mac0": do_mac0,
}


def main():
    inp = load_input()
    emit(HANDLERS[inp["kind"]](inp))


if __name__ == "__main__":
    main()
