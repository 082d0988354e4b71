//! Fuzz entry points: one function per fuzz target, shared by the
//! `cargo fuzz` harness in `fuzz/` and by the in-workspace smoke test
//! `tests/fuzz_smoke.rs`.
//!
//! **Not an API.** Hidden from the docs, no stability promise.
//!
//! Every function takes arbitrary bytes, feeds them to one decoder or one
//! open function of this crate and ignores the result: the property under
//! test is that no input makes the crate panic, hang or allocate without
//! bound. Keys, contexts and valid sealed objects are built once from fixed
//! bytes and seeds (see [`self_check`]); if that setup ever fails, every
//! target returns at once instead of panicking, and [`self_check`] says why.
//!
//! Two kinds of targets:
//!
//! - *raw* targets hand the input to the function unchanged;
//! - *mutating* targets (names ending in `_mutated`) start from a VALID
//!   object sealed with the fixed keys and edit it with the input as an edit
//!   script (see [`mutate`]), so that the fuzzer gets past the parser into
//!   the AEAD, signature and MAC code. The `*_inner_mutated` and
//!   `*_material_mutated` targets edit an inner layer and then redo the outer
//!   layer's cryptography correctly, to reach the code behind it (inner
//!   parsing, signature checks, key material decoding). The first input
//!   byte of a mutating target is a configuration byte; an empty input
//!   opens the valid object unchanged.

use std::sync::OnceLock;

use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, VerifyingKey};

use crate::broadcast::{self, BroadcastReceiver, ReplayPolicy};
use crate::cose::{
    self, ALG_EDDSA, HDR_ALG, HDR_EPOCH, HDR_KID, HDR_KID_CONTEXT, HDR_PARTIAL_IV, HDR_TIMESTAMP,
    HVal,
};
use crate::credential::{EntityCredential, PublicCredential, TrustStore};
use crate::crypto::AeadAlg;
use crate::delivery;
use crate::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use crate::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use crate::kdf;
use crate::replay::SeqWindow;
use crate::report::{self, PairwiseKey};
use crate::single::{self, MacKey};
use crate::statement::{self, UnverifiedStatement};
use crate::testrng::TestRng;

// ---------------------------------------------------------------------------
// Target table

/// A fuzz target: its name (the file name under `fuzz/fuzz_targets/`) and
/// its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target. The smoke test runs all of them.
pub const TARGETS: &[Target] = &[
    ("parse_sign1", parse_sign1),
    ("parse_encrypt0", parse_encrypt0),
    ("parse_encrypt", parse_encrypt),
    ("parse_mac0", parse_mac0),
    ("peek_broadcast", peek_broadcast),
    ("broadcast_open", broadcast_open),
    ("broadcast_open_mutated", broadcast_open_mutated),
    ("broadcast_open_inner_mutated", broadcast_open_inner_mutated),
    ("peek_report", peek_report),
    ("verify_report", verify_report),
    ("verify_report_mutated", verify_report_mutated),
    ("verify_reports_batch", verify_reports_batch),
    ("verify_reports_batch_mutated", verify_reports_batch_mutated),
    ("open_report_unverified", open_report_unverified),
    (
        "open_report_unverified_mutated",
        open_report_unverified_mutated,
    ),
    ("report_inner_mutated", report_inner_mutated),
    ("peek_key_delivery", peek_key_delivery),
    ("open_key_delivery", open_key_delivery),
    ("open_key_delivery_mutated", open_key_delivery_mutated),
    ("key_delivery_inner_mutated", key_delivery_inner_mutated),
    (
        "key_delivery_material_mutated",
        key_delivery_material_mutated,
    ),
    ("decrypt_from", decrypt_from),
    ("decrypt_from_mutated", decrypt_from_mutated),
    ("mac0_verify", mac0_verify),
    ("mac0_verify_mutated", mac0_verify_mutated),
    ("group_key_material_from_cbor", group_key_material_from_cbor),
    ("group_key_material_mutated", group_key_material_mutated),
    ("seq_window_from_bytes", seq_window_from_bytes),
    ("seq_window_mutated", seq_window_mutated),
    (
        "entity_credential_from_cose_key_set",
        entity_credential_from_cose_key_set,
    ),
    (
        "public_credential_from_cose_key_set",
        public_credential_from_cose_key_set,
    ),
    (
        "trust_store_from_cose_key_set",
        trust_store_from_cose_key_set,
    ),
    ("cose_key_set_mutated", cose_key_set_mutated),
    ("public_key_from_pem", public_key_from_pem),
    ("entity_credential_from_pem", entity_credential_from_pem),
    ("pem_der_mutated", pem_der_mutated),
    ("statement_verify", statement_verify),
    ("statement_mutated", statement_mutated),
    ("seq_num_from_partial_iv", seq_num_from_partial_iv),
    ("entity_id_from_bytes", entity_id_from_bytes),
];

/// Valid inputs for a raw target (seed corpus; the smoke test also runs
/// every truncation of them). Mutating targets get the empty script (the
/// unchanged valid object) and a few small scripts. Unknown names and a
/// failed setup give an empty list.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let Some(fx) = fixture() else {
        return Vec::new();
    };
    let bcasts = || fx.broadcasts.iter().map(|b| b.sealed.clone()).collect();
    let reports = || fx.reports.iter().map(|r| r.sealed.clone()).collect();
    match target {
        "parse_sign1" => {
            let mut v: Vec<Vec<u8>> = reports();
            v.push(fx.delivery.sealed.clone());
            v.extend(fx.broadcasts.iter().map(|b| b.inner.clone()));
            v
        }
        "parse_encrypt0" => {
            let mut v: Vec<Vec<u8>> = bcasts();
            v.extend(fx.reports.iter().map(|r| r.inner.clone()));
            v
        }
        "parse_encrypt" => vec![fx.single_sealed.clone(), fx.delivery.inner.clone()],
        "parse_mac0" | "mac0_verify" => vec![fx.mac_sealed.clone()],
        "peek_broadcast" | "broadcast_open" => bcasts(),
        "peek_report" | "verify_report" | "open_report_unverified" => reports(),
        "verify_reports_batch" => vec![batch_encode(
            &fx.reports
                .iter()
                .take(BATCH)
                .map(|r| r.sealed.as_slice())
                .collect::<Vec<_>>(),
        )],
        "peek_key_delivery" | "open_key_delivery" => vec![fx.delivery.sealed.clone()],
        "decrypt_from" => vec![fx.single_sealed.clone()],
        "group_key_material_from_cbor" => vec![fx.material_cbor.clone()],
        "seq_window_from_bytes" => vec![fx.window_bytes.clone(), SeqWindow::new().to_bytes()],
        "entity_credential_from_cose_key_set" => vec![fx.private_set.clone()],
        "public_credential_from_cose_key_set" => vec![fx.public_set.clone()],
        "trust_store_from_cose_key_set" => vec![fx.trust_set.clone(), fx.public_set.clone()],
        "public_key_from_pem" => vec![fx.spki_pem.clone().into_bytes()],
        "entity_credential_from_pem" => vec![fx.pkcs8_pem.clone().into_bytes()],
        "statement_verify" => vec![fx.statement.clone()],
        "seq_num_from_partial_iv" => vec![vec![1], vec![0xff; 5], vec![0x01, 0x00]],
        "entity_id_from_bytes" => vec![b"device-7".to_vec(), b"a".repeat(64)],
        name if name.ends_with("_mutated") && TARGETS.iter().any(|(n, _)| *n == name) => vec![
            Vec::new(),
            vec![0],
            vec![1],
            vec![2, 0, 0, 0, 0x01],
            vec![3, 6, 0, 0, 0],
        ],
        _ => Vec::new(),
    }
}

/// Checks the fixture behind the targets: that it could be built, that each
/// valid object opens with the very call its targets make, and that the
/// outer layers the `*_inner_mutated` / `*_material_mutated` targets rebuild
/// are byte-identical to what the sealing functions produce. Returns which
/// check failed. Without this, a broken fixture would make every mutating
/// target silently return early.
pub fn self_check() -> Result<(), &'static str> {
    let fx = fixture_result()?;
    for b in &fx.broadcasts {
        let mut rx = receiver(fx, 0).ok_or("broadcast receiver")?;
        rx.open(&b.sealed, TARGET, b.timestamp)
            .map_err(|_| "valid broadcast does not open")?;
        if rx.open(&b.sealed, TARGET, b.timestamp).is_ok() {
            return Err("replayed broadcast opened twice");
        }
        if broadcast_outer(fx, b, &b.inner).as_deref() != Some(b.sealed.as_slice()) {
            return Err("rebuilt broadcast differs from seal_broadcast");
        }
    }
    for r in &fx.reports {
        let meter = fx.meter(r.meter).ok_or("meter")?;
        let v = report::verify_report(&r.sealed, &fx.headend_id, |id| fx.lookup(id))
            .map_err(|_| "valid report does not verify")?;
        report::open_report(&v, &fx.headend_id, &meter.pairwise)
            .map_err(|_| "verified report does not open")?;
        report::open_report_unverified(&r.sealed, &fx.headend_id, &meter.pairwise)
            .map_err(|_| "valid report does not open unverified")?;
        if report_outer(fx, r, &r.inner).as_deref() != Some(r.sealed.as_slice()) {
            return Err("rebuilt report differs from seal_report");
        }
    }
    let all: Vec<&[u8]> = fx.reports.iter().map(|r| r.sealed.as_slice()).collect();
    if report::verify_reports_batch(&all, &fx.headend_id, |id| fx.lookup(id))
        .iter()
        .any(|r| r.is_err())
    {
        return Err("valid report batch does not verify");
    }
    open_delivery(fx, &fx.delivery.sealed).map_err(|_| "valid key delivery does not open")?;
    if delivery_outer(fx, &fx.delivery.inner).as_deref() != Some(fx.delivery.sealed.as_slice()) {
        return Err("rebuilt key delivery differs from seal_key_delivery");
    }
    if delivery_from_material(fx, &fx.material_cbor).as_deref()
        != Some(fx.delivery.sealed.as_slice())
    {
        return Err("key delivery rebuilt from material differs");
    }
    single::decrypt_from(
        fx.member.id().as_bytes(),
        fx.member.agreement_secret(),
        &fx.single_sealed,
        SINGLE_AAD,
    )
    .map_err(|_| "valid COSE_Encrypt does not decrypt")?;
    single::mac0_verify(&fx.mac_key, &fx.mac_sealed, MAC_AAD)
        .map_err(|_| "valid COSE_Mac0 does not verify")?;
    GroupKeyMaterial::from_cbor(&fx.material_cbor).map_err(|_| "key material round trip")?;
    SeqWindow::from_bytes(&fx.window_bytes).map_err(|_| "replay window round trip")?;
    EntityCredential::from_cose_key_set(&fx.private_set).map_err(|_| "private key set")?;
    PublicCredential::from_cose_key_set(&fx.public_set).map_err(|_| "public key set")?;
    TrustStore::from_cose_key_set(&fx.trust_set).map_err(|_| "trust store")?;
    PublicCredential::ed25519_from_public_pem(&fx.spki_pem).map_err(|_| "SPKI PEM")?;
    EntityCredential::from_ed25519_pkcs8_pem(fx.member.id().clone(), &fx.pkcs8_pem, &X_SECRET)
        .map_err(|_| "PKCS#8 PEM")?;
    let st = UnverifiedStatement::parse(&fx.statement, STATEMENT_LIMIT)
        .map_err(|_| "valid statement does not parse")?;
    st.verify(&fx.manager.signing_key().verifying_key(), STATEMENT_LABEL)
        .map_err(|_| "valid statement does not verify")?;
    if der_to_pem(true, &fx.pkcs8_der).as_deref() != Some(fx.pkcs8_pem.as_str()) {
        return Err("PKCS#8 PEM rebuilt from DER differs");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The edit script of the mutating targets

/// Most edits one script applies.
const MAX_EDITS: usize = 64;
/// Most bytes a script may add to the valid object.
const MAX_GROWTH: usize = 1024;
/// CBOR heads worth inserting: length escapes, indefinite-length starts,
/// break, empty containers, a tag.
const INTERESTING: [u8; 16] = [
    0x00, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x40, 0x5f, 0x7f, 0x80, 0x9f, 0xa0, 0xbf, 0xc0, 0xff,
];

/// Applies the edit script `script` to a copy of `base`.
///
/// The script is read in 4-byte edits `[op, pos_hi, pos_lo, value]` (a short
/// last edit is padded with zeros), at most 64 of them; `pos` is taken
/// modulo the current length. `op % 8`: 0–2 XOR the byte at `pos` with
/// `value` (0 counts as 1), 3 set it to `value`, 4 insert `value` before
/// `pos`, 5 remove the byte at `pos`, 6 truncate to `pos`, 7 insert an
/// interesting CBOR head byte chosen by `value`. The result grows by at most
/// 1 KiB. The empty script returns `base` unchanged.
pub fn mutate(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let limit = base.len() + MAX_GROWTH;
    for edit in script.chunks(4).take(MAX_EDITS) {
        let byte = |i: usize| edit.get(i).copied().unwrap_or(0);
        let (op, value) = (byte(0), byte(3));
        let pos = usize::from(u16::from_be_bytes([byte(1), byte(2)]));
        let len = out.len();
        match op % 8 {
            0..=2 => {
                if let Some(b) = out.get_mut(pos % len.max(1)) {
                    *b ^= value.max(1);
                }
            }
            3 => {
                if let Some(b) = out.get_mut(pos % len.max(1)) {
                    *b = value;
                }
            }
            4 => {
                if len < limit {
                    out.insert(pos % (len + 1), value);
                }
            }
            5 => {
                if len > 0 {
                    out.remove(pos % len);
                }
            }
            6 => out.truncate(pos % (len + 1)),
            _ => {
                if len < limit {
                    let head = INTERESTING[usize::from(value) % INTERESTING.len()];
                    out.insert(pos % (len + 1), head);
                }
            }
        }
    }
    out
}

/// Splits a mutating target's input into its configuration byte (0 when
/// the input is empty) and its edit script.
fn config(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&cfg, script)) => (cfg, script),
        None => (0, &[]),
    }
}

/// Picks one element by a configuration byte.
fn pick<T>(items: &[T], cfg: u8) -> Option<&T> {
    items.get(usize::from(cfg) % items.len().max(1))
}

/// Arbitrary bytes as text: the UTF-8 they are, or a lossy conversion, so
/// that text parsers see every input.
fn as_text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Reports in the batch of the batch targets (each costs a signature check).
const BATCH: usize = 2;

/// Batch encoding of the raw batch target: items with a 2-byte big-endian
/// length prefix; a prefix that runs past the end takes the rest.
fn batch_split(data: &[u8]) -> Vec<&[u8]> {
    const MAX_ITEMS: usize = 16;
    let mut items = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && items.len() < MAX_ITEMS {
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            items.push(rest);
            break;
        };
        let body = rest.get(2..).unwrap_or_default();
        let n = usize::from(u16::from_be_bytes([hi, lo])).min(body.len());
        let (item, tail) = body.split_at(n);
        items.push(item);
        rest = tail;
    }
    items
}

/// Inverse of [`batch_split`], for seeds.
fn batch_encode(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        let n = u16::try_from(item.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(item.get(..usize::from(n)).unwrap_or_default());
    }
    out
}

// ---------------------------------------------------------------------------
// Fixture

const TARGET: &str = "cmd/doors";
const T0: u64 = 1_700_000_000_000;
const SINGLE_AAD: &[u8] = b"sealcast fuzz single";
const MAC_AAD: &[u8] = b"sealcast fuzz mac";
const STATEMENT_LABEL: &str = "sealcast ack v1";
const STATEMENT_LIMIT: usize = 64 * 1024;
/// The member's X25519 secret (also used by the PEM targets).
const X_SECRET: [u8; 32] = [0x27; 32];
/// Seed of the randomness of the key delivery and the single message.
const RNG_SEED: u64 = 0x5ea1_ca57;

struct Broadcast {
    sender_id: SenderId,
    seq: SeqNum,
    timestamp: UnixMillis,
    sealed: Vec<u8>,
    inner: Vec<u8>,
}

struct Meter {
    id: EntityId,
    cred: EntityCredential,
    public: PublicCredential,
    /// The headend's side of the pairwise key (the same key either way).
    pairwise: PairwiseKey,
}

struct Report {
    meter: usize,
    seq: SeqNum,
    timestamp: UnixMillis,
    sealed: Vec<u8>,
    inner: Vec<u8>,
}

struct Delivery {
    sealed: Vec<u8>,
    inner: Vec<u8>,
}

struct Fixture {
    manager: EntityCredential,
    member: EntityCredential,
    headend_id: EntityId,
    material: GroupKeyMaterial,
    material_cbor: Vec<u8>,
    ctx: GroupContext,
    broadcasts: Vec<Broadcast>,
    meters: Vec<Meter>,
    reports: Vec<Report>,
    delivery: Delivery,
    single_sealed: Vec<u8>,
    mac_key: MacKey,
    mac_sealed: Vec<u8>,
    window: SeqWindow,
    window_bytes: Vec<u8>,
    private_set: Vec<u8>,
    public_set: Vec<u8>,
    trust_set: Vec<u8>,
    pkcs8_der: Vec<u8>,
    spki_der: Vec<u8>,
    pkcs8_pem: String,
    spki_pem: String,
    statement: Vec<u8>,
}

impl Fixture {
    fn meter(&self, i: usize) -> Option<&Meter> {
        self.meters.get(i)
    }

    fn lookup(&self, id: &EntityId) -> Option<&VerifyingKey> {
        self.meters
            .iter()
            .find(|m| m.id == *id)
            .map(|m| m.public.verifying_key())
    }
}

static FIXTURE: OnceLock<Result<Fixture, &'static str>> = OnceLock::new();

fn fixture_result() -> Result<&'static Fixture, &'static str> {
    FIXTURE.get_or_init(build_fixture).as_ref().map_err(|e| *e)
}

fn fixture() -> Option<&'static Fixture> {
    fixture_result().ok()
}

/// Names the setup step that failed.
trait Step<T> {
    fn step(self, what: &'static str) -> Result<T, &'static str>;
}

impl<T, E> Step<T> for Result<T, E> {
    fn step(self, what: &'static str) -> Result<T, &'static str> {
        self.map_err(|_| what)
    }
}

impl<T> Step<T> for Option<T> {
    fn step(self, what: &'static str) -> Result<T, &'static str> {
        self.ok_or(what)
    }
}

fn cred(name: &str, n: u8) -> Result<EntityCredential, &'static str> {
    Ok(EntityCredential::from_secret_bytes(
        EntityId::new(name).step("entity id")?,
        &[n; 32],
        &[n.wrapping_add(0x80); 32],
    ))
}

fn build_fixture() -> Result<Fixture, &'static str> {
    let manager = cred("manager-1", 1)?;
    let member = EntityCredential::from_secret_bytes(
        EntityId::new("device-7").step("entity id")?,
        &[7; 32],
        &X_SECRET,
    );
    let headend = cred("headend-1", 3)?;
    let headend_id = headend.id().clone();

    // Group key material: two authorized signers, one with the longest
    // sender id. (Not the empty one: `seal_broadcast` writes it as kid h''
    // and coset refuses an empty kid on parsing, so such a broadcast never
    // opens.)
    let signers = vec![
        AuthorizedSigner {
            sender_id: SenderId::new([0x01]).step("sender id")?,
            entity: manager.id().clone(),
            verifying_key: manager.signing_key().verifying_key(),
        },
        AuthorizedSigner {
            sender_id: SenderId::new([0x07, 0, 0, 0, 0, 0x01]).step("sender id")?,
            entity: member.id().clone(),
            verifying_key: member.signing_key().verifying_key(),
        },
    ];
    let material = GroupKeyMaterial::new(
        GroupId::new(b"fleet-north").step("group id")?,
        Epoch::new(3),
        AeadAlg::A128Gcm,
        &[0x33; 32],
        &[0x44; 8],
        signers,
        Some(UnixMillis::new(T0 + 86_400_000)),
    )
    .step("GroupKeyMaterial::new")?;
    let material_cbor = material
        .to_cbor()
        .step("GroupKeyMaterial::to_cbor")?
        .to_vec();
    let ctx = GroupContext::new(&material).step("GroupContext::new")?;

    // Broadcasts, and their inner COSE_Sign1 (decrypted back out).
    let mut broadcasts = Vec::new();
    for (signer, seq, ts, payload) in [
        (&manager, 5u64, T0, b"open all doors".as_slice()),
        (&member, 0x01_0203_0405, T0 + 1, b"".as_slice()),
    ] {
        let seq = SeqNum::new(seq).step("seq")?;
        let timestamp = UnixMillis::new(ts);
        let sealed = broadcast::seal_broadcast(
            &ctx,
            signer.id(),
            signer.signing_key(),
            seq,
            timestamp,
            TARGET,
            payload,
        )
        .step("seal_broadcast")?;
        let sender_id = ctx.sender_id_of(signer.id()).step("sender_id_of")?.clone();
        let mut b = Broadcast {
            sender_id,
            seq,
            timestamp,
            sealed,
            inner: Vec::new(),
        };
        b.inner = broadcast_decrypt_inner(&ctx, &b)?;
        broadcasts.push(b);
    }

    // Reports of two meters to the headend.
    let mut meters = Vec::new();
    for (name, n) in [("meter-1", 11u8), ("meter-2", 12)] {
        let c = cred(name, n)?;
        let pairwise = PairwiseKey::derive(
            AeadAlg::A128Gcm,
            headend.agreement_secret(),
            c.public().agreement_key(),
            c.id(),
            &headend_id,
        )
        .step("PairwiseKey::derive")?;
        meters.push(Meter {
            id: c.id().clone(),
            public: c.public(),
            cred: c,
            pairwise,
        });
    }
    let mut reports = Vec::new();
    for (meter, seq, ts, reading) in [
        (0usize, 7u64, T0, b"21.5 C".as_slice()),
        (1, 9, T0 + 5, b"".as_slice()),
        (0, 8, T0 + 10, b"21.7 C".as_slice()),
        (1, 300, T0 + 15, b"1013 hPa".as_slice()),
    ] {
        let m = meters.get(meter).step("meter")?;
        let seq = SeqNum::new(seq).step("seq")?;
        let timestamp = UnixMillis::new(ts);
        let sealed = report::seal_report(
            &m.id,
            m.cred.signing_key(),
            &headend_id,
            &m.pairwise,
            seq,
            timestamp,
            reading,
        )
        .step("seal_report")?;
        let inner = cose::parse_sign1(&sealed, report::MAX_REPORT_LEN)
            .step("report parse")?
            .payload
            .step("report payload")?;
        reports.push(Report {
            meter,
            seq,
            timestamp,
            sealed,
            inner,
        });
    }

    // Key delivery of the group material to the member.
    let sealed = delivery::seal_key_delivery(
        manager.id(),
        manager.signing_key(),
        member.id(),
        member.public().agreement_key(),
        &material,
        &mut TestRng::new(RNG_SEED),
    )
    .step("seal_key_delivery")?;
    let inner = cose::parse_sign1(&sealed, delivery::MAX_DELIVERY_LEN)
        .step("key delivery parse")?
        .payload
        .step("key delivery payload")?;
    let delivery = Delivery { sealed, inner };

    // Single-message services.
    let single_sealed = single::encrypt_to(
        AeadAlg::A256Gcm,
        member.id().as_bytes(),
        member.public().agreement_key(),
        b"a single secret",
        SINGLE_AAD,
        &mut TestRng::new(RNG_SEED + 1),
    )
    .step("encrypt_to")?;
    let mac_key = MacKey::new(
        crate::ids::KeyId::new(b"mac-1").step("key id")?,
        &[0x42; 32],
    )
    .step("MacKey::new")?;
    let mac_sealed =
        single::mac0_create(&mac_key, b"meter config v2", MAC_AAD).step("mac0_create")?;

    // A replay window with some history.
    let mut window = SeqWindow::with_size(256).step("SeqWindow::with_size")?;
    for n in [1u64, 5, 200, 300, 301, 555] {
        let token = window
            .check(SeqNum::new(n).step("seq")?)
            .step("SeqWindow::check")?;
        window.commit(token).step("SeqWindow::commit")?;
    }
    let window_bytes = window.to_bytes();

    // Credential files and PEM.
    let private_set = member
        .to_cose_key_set()
        .step("EntityCredential::to_cose_key_set")?
        .to_vec();
    let public_set = member
        .public()
        .to_cose_key_set()
        .step("PublicCredential::to_cose_key_set")?;
    let trust: TrustStore = [manager.public(), member.public(), headend.public()]
        .into_iter()
        .collect();
    let trust_set = trust
        .to_cose_key_set()
        .step("TrustStore::to_cose_key_set")?;
    let pkcs8_der = member
        .signing_key()
        .to_pkcs8_der()
        .step("to_pkcs8_der")?
        .as_bytes()
        .to_vec();
    let spki_der = member
        .signing_key()
        .verifying_key()
        .to_public_key_der()
        .step("to_public_key_der")?
        .as_bytes()
        .to_vec();
    let pkcs8_pem = der_to_pem(true, &pkcs8_der).step("PKCS#8 PEM")?;
    let spki_pem = der_to_pem(false, &spki_der).step("SPKI PEM")?;

    // A signed statement of the manager (CBOR payload).
    let statement = statement::sign_statement(
        manager.id(),
        manager.signing_key(),
        STATEMENT_LABEL,
        &[
            0x82, 0x4b, b'f', b'l', b'e', b'e', b't', b'-', b'n', b'o', b'r', b't', b'h', 0x03,
        ],
    );

    Ok(Fixture {
        manager,
        member,
        headend_id,
        material,
        material_cbor,
        ctx,
        broadcasts,
        meters,
        reports,
        delivery,
        single_sealed,
        mac_key,
        mac_sealed,
        window,
        window_bytes,
        private_set,
        public_set,
        trust_set,
        pkcs8_der,
        spki_der,
        pkcs8_pem,
        spki_pem,
        statement,
    })
}

fn der_to_pem(private: bool, der: &[u8]) -> Option<String> {
    let label = if private { "PRIVATE KEY" } else { "PUBLIC KEY" };
    pem::encode_string(label, LineEnding::LF, der).ok()
}

/// A receiver for the fixture group with fresh replay state; `cfg` picks
/// the replay policy.
fn receiver(fx: &Fixture, cfg: u8) -> Option<BroadcastReceiver> {
    let policy = match cfg % 3 {
        0 => ReplayPolicy::default(),
        1 => ReplayPolicy::Sequence {
            window: 128,
            max_skew_ms: Some(30_000),
        },
        _ => ReplayPolicy::Timestamp {
            skew_ms: 30_000,
            max_entries: 4,
        },
    };
    BroadcastReceiver::new(fx.ctx.clone(), policy).ok()
}

/// Opens `bytes` with a fresh receiver, then once more (a replay).
fn open_broadcast_twice(fx: &Fixture, cfg: u8, bytes: &[u8], now: UnixMillis) {
    if let Some(mut rx) = receiver(fx, cfg)
        && rx.open(bytes, TARGET, now).is_ok()
    {
        let _ = rx.open(bytes, TARGET, now);
    }
}

/// The broadcast's context and outer protected header, as `seal_broadcast`
/// makes them.
fn broadcast_aad(ctx: &GroupContext, b: &Broadcast) -> (Vec<u8>, Vec<u8>) {
    let context = broadcast::broadcast_context(
        ctx.group(),
        ctx.epoch(),
        &b.sender_id,
        b.seq,
        b.timestamp,
        TARGET,
    );
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ctx.alg().cose_id()))]);
    let aad = cose::enc_structure("Encrypt0", &protected, &context);
    (protected, aad)
}

fn broadcast_decrypt_inner(ctx: &GroupContext, b: &Broadcast) -> Result<Vec<u8>, &'static str> {
    let entry = ctx.sender(&b.sender_id).step("broadcast sender entry")?;
    let (_, aad) = broadcast_aad(ctx, b);
    let nonce = kdf::nonce(ctx.common_iv(), b.sender_id.as_bytes(), &b.seq.partial_iv())
        .step("broadcast nonce")?;
    let outer =
        cose::parse_encrypt0(&b.sealed, broadcast::MAX_BROADCAST_LEN).step("broadcast parse")?;
    let ciphertext = outer.ciphertext.step("broadcast ciphertext")?;
    let plain = entry
        .key
        .open(&nonce, &aad, &ciphertext)
        .step("broadcast AEAD")?;
    Ok(plain.to_vec())
}

/// Encrypts `inner` as the outer layer of broadcast `b`, as `seal_broadcast`
/// does, so that an edited inner object reaches the receiver's inner checks.
fn broadcast_outer(fx: &Fixture, b: &Broadcast, inner: &[u8]) -> Option<Vec<u8>> {
    let ctx = &fx.ctx;
    let entry = ctx.sender(&b.sender_id)?;
    let (protected, aad) = broadcast_aad(ctx, b);
    let piv = b.seq.partial_iv();
    let nonce = kdf::nonce(ctx.common_iv(), b.sender_id.as_bytes(), &piv).ok()?;
    let ciphertext = entry.key.seal(&nonce, &aad, inner).ok()?;
    let mut out = Vec::with_capacity(ciphertext.len() + 64);
    cose::write_encrypt0(
        &mut out,
        &protected,
        &[
            (HDR_KID, HVal::Bytes(b.sender_id.as_bytes())),
            (HDR_PARTIAL_IV, HVal::Bytes(&piv)),
            (HDR_KID_CONTEXT, HVal::Bytes(ctx.group().as_bytes())),
            (HDR_EPOCH, HVal::Uint(u64::from(ctx.epoch().get()))),
            (HDR_TIMESTAMP, HVal::Uint(b.timestamp.get())),
        ],
        &ciphertext,
    );
    Some(out)
}

/// Signs `inner` as the outer COSE_Sign1 of report `r`, as `seal_report`
/// does.
fn report_outer(fx: &Fixture, r: &Report, inner: &[u8]) -> Option<Vec<u8>> {
    let m = fx.meter(r.meter)?;
    let context = report::report_context(&m.id, &fx.headend_id, r.seq, r.timestamp);
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]);
    let signature = m
        .cred
        .signing_key()
        .sign(&cose::sig1_structure(&protected, &context, inner))
        .to_bytes();
    let piv = r.seq.partial_iv();
    let mut out = Vec::with_capacity(inner.len() + 128);
    cose::write_four(
        &mut out,
        cose::TAG_SIGN1,
        &protected,
        &[
            (HDR_KID, HVal::Bytes(m.id.as_bytes())),
            (HDR_PARTIAL_IV, HVal::Bytes(&piv)),
            (HDR_TIMESTAMP, HVal::Uint(r.timestamp.get())),
        ],
        inner,
        &signature,
    );
    Some(out)
}

/// Verifies a report, opens the verified report, and opens it unverified.
fn verify_and_open_report(fx: &Fixture, meter: usize, bytes: &[u8]) {
    let Some(m) = fx.meter(meter) else {
        return;
    };
    if let Ok(v) = report::verify_report(bytes, &fx.headend_id, |id| fx.lookup(id)) {
        let _ = report::open_report(&v, &fx.headend_id, &m.pairwise);
    }
    let _ = report::open_report_unverified(bytes, &fx.headend_id, &m.pairwise);
}

/// Signs `inner` as the outer layer of the fixture's key delivery, as
/// `seal_key_delivery` does.
fn delivery_outer(fx: &Fixture, inner: &[u8]) -> Option<Vec<u8>> {
    let group = fx.material.group();
    let epoch = fx.material.epoch();
    let context = delivery::delivery_context(fx.member.id(), group, epoch);
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]);
    let signature = fx
        .manager
        .signing_key()
        .sign(&cose::sig1_structure(&protected, &context, inner))
        .to_bytes();
    let mut out = Vec::with_capacity(inner.len() + 128);
    cose::write_four(
        &mut out,
        cose::TAG_SIGN1,
        &protected,
        &[
            (HDR_KID, HVal::Bytes(fx.manager.id().as_bytes())),
            (HDR_KID_CONTEXT, HVal::Bytes(group.as_bytes())),
            (HDR_EPOCH, HVal::Uint(u64::from(epoch.get()))),
        ],
        inner,
        &signature,
    );
    Some(out)
}

/// A complete, correctly encrypted and signed key delivery whose plaintext
/// is `material_cbor` (valid or not).
fn delivery_from_material(fx: &Fixture, material_cbor: &[u8]) -> Option<Vec<u8>> {
    let context =
        delivery::delivery_context(fx.member.id(), fx.material.group(), fx.material.epoch());
    let inner = single::encrypt_to(
        fx.material.alg(),
        fx.member.id().as_bytes(),
        fx.member.public().agreement_key(),
        material_cbor,
        &context,
        &mut TestRng::new(RNG_SEED),
    )
    .ok()?;
    delivery_outer(fx, &inner)
}

fn open_delivery(fx: &Fixture, bytes: &[u8]) -> crate::Result<GroupKeyMaterial> {
    delivery::open_key_delivery(
        fx.member.id(),
        fx.member.agreement_secret(),
        fx.manager.id(),
        &fx.manager.signing_key().verifying_key(),
        bytes,
    )
}

/// What a caller does with decoded key material: derive its context and
/// encode it again.
fn use_material(m: &GroupKeyMaterial) {
    let _ = GroupContext::new(m);
    let _ = m.to_cbor();
}

/// What a receiver does with a restored window: encode it, and check and
/// commit numbers around its edge.
fn use_window(mut w: SeqWindow) {
    let _ = w.to_bytes();
    let high = w.highest().map_or(0, SeqNum::get);
    let size = w.size() as u64;
    for n in [
        0,
        high.saturating_sub(size),
        high.saturating_sub(1),
        high,
        high + 1,
        high + size,
        SeqNum::MAX,
    ] {
        if let Ok(seq) = SeqNum::new(n)
            && let Ok(token) = w.check(seq)
        {
            let _ = w.commit(token);
        }
    }
    let _ = w.to_bytes();
}

fn use_trust_store(t: &TrustStore) {
    let _ = t.to_cose_key_set();
    for cred in t.iter() {
        let _ = t.get_by_kid(cred.id().as_bytes());
    }
}

// ---------------------------------------------------------------------------
// COSE parsers

/// `cose::parse_sign1` on arbitrary bytes.
pub fn parse_sign1(data: &[u8]) {
    let _ = cose::parse_sign1(data, single::MAX_SINGLE_LEN);
}

/// `cose::parse_encrypt0` on arbitrary bytes.
pub fn parse_encrypt0(data: &[u8]) {
    let _ = cose::parse_encrypt0(data, single::MAX_SINGLE_LEN);
}

/// `cose::parse_encrypt` on arbitrary bytes.
pub fn parse_encrypt(data: &[u8]) {
    let _ = cose::parse_encrypt(data, single::MAX_SINGLE_LEN);
}

/// `cose::parse_mac0` on arbitrary bytes.
pub fn parse_mac0(data: &[u8]) {
    let _ = cose::parse_mac0(data, single::MAX_SINGLE_LEN);
}

// ---------------------------------------------------------------------------
// Broadcast

/// `broadcast::peek_broadcast` on arbitrary bytes.
pub fn peek_broadcast(data: &[u8]) {
    let _ = broadcast::peek_broadcast(data);
}

/// `BroadcastReceiver::open` on arbitrary bytes, under each replay policy.
pub fn broadcast_open(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    for cfg in 0..3 {
        open_broadcast_twice(fx, cfg, data, UnixMillis::new(T0));
    }
}

/// `BroadcastReceiver::open` on an edited valid broadcast. Config byte:
/// bit 0 picks the broadcast, `(cfg >> 1) % 3` the replay policy, bit 3 a
/// receive time past the key's validity.
pub fn broadcast_open_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let Some(b) = pick(&fx.broadcasts, cfg) else {
        return;
    };
    let now = if cfg & 8 != 0 {
        UnixMillis::new(T0 + 2 * 86_400_000)
    } else {
        b.timestamp
    };
    open_broadcast_twice(fx, cfg >> 1, &mutate(&b.sealed, script), now);
}

/// `BroadcastReceiver::open` on a broadcast whose inner COSE_Sign1 was
/// edited and then correctly re-encrypted: reaches the inner parser, the
/// signer check and the signature check. Config byte as in
/// [`broadcast_open_mutated`] (bits 0–2).
pub fn broadcast_open_inner_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let Some(b) = pick(&fx.broadcasts, cfg) else {
        return;
    };
    if let Some(bytes) = broadcast_outer(fx, b, &mutate(&b.inner, script)) {
        open_broadcast_twice(fx, cfg >> 1, &bytes, b.timestamp);
    }
}

// ---------------------------------------------------------------------------
// Reports

/// `report::peek_report` on arbitrary bytes.
pub fn peek_report(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let _ = report::peek_report(data, &fx.headend_id);
}

/// `report::verify_report` on arbitrary bytes (and `open_report` if it
/// verifies).
pub fn verify_report(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    if let Ok(v) = report::verify_report(data, &fx.headend_id, |id| fx.lookup(id)) {
        let meter = fx.meters.iter().position(|m| m.id == v.header().reporter);
        if let Some(m) = meter.and_then(|i| fx.meter(i)) {
            let _ = report::open_report(&v, &fx.headend_id, &m.pairwise);
        }
    }
}

/// `report::verify_report` on an edited valid report; the config byte picks
/// the report.
pub fn verify_report_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let Some(r) = pick(&fx.reports, cfg) else {
        return;
    };
    let bytes = mutate(&r.sealed, script);
    let _ = report::verify_report(&bytes, &fx.headend_id, |id| fx.lookup(id));
}

/// `report::verify_reports_batch` on arbitrary bytes split into up to 16
/// reports (each with a 2-byte big-endian length prefix).
pub fn verify_reports_batch(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let items = batch_split(data);
    let _ = report::verify_reports_batch(&items, &fx.headend_id, |id| fx.lookup(id));
}

/// `report::verify_reports_batch` on a batch of two valid reports (of two
/// reporters) with one of them edited (config bit 0) and, with bit 7, the
/// script itself appended as a raw item and a duplicate of the first report
/// added.
pub fn verify_reports_batch_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let base = fx.reports.get(..BATCH).unwrap_or_default();
    let which = usize::from(cfg & 0x7f) % BATCH;
    let Some(target) = base.get(which) else {
        return;
    };
    let edited = mutate(&target.sealed, script);
    let mut items: Vec<&[u8]> = base
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i == which {
                edited.as_slice()
            } else {
                r.sealed.as_slice()
            }
        })
        .collect();
    if cfg & 0x80 != 0 {
        items.push(script);
        if let Some(first) = fx.reports.first() {
            items.push(&first.sealed);
        }
    }
    let _ = report::verify_reports_batch(&items, &fx.headend_id, |id| fx.lookup(id));
}

/// `report::open_report_unverified` on arbitrary bytes (with meter-1's
/// pairwise key).
pub fn open_report_unverified(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let Some(m) = fx.meter(0) else {
        return;
    };
    let _ = report::open_report_unverified(data, &fx.headend_id, &m.pairwise);
}

/// `report::open_report_unverified` on an edited valid report; the config
/// byte picks the report.
pub fn open_report_unverified_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let Some(r) = pick(&fx.reports, cfg) else {
        return;
    };
    let Some(m) = fx.meter(r.meter) else {
        return;
    };
    let bytes = mutate(&r.sealed, script);
    let _ = report::open_report_unverified(&bytes, &fx.headend_id, &m.pairwise);
}

/// A report whose inner COSE_Encrypt0 was edited and then correctly
/// re-signed: reaches the inner parser and the AEAD of `open_report` and
/// `open_report_unverified`. The config byte picks the report.
pub fn report_inner_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let Some(r) = pick(&fx.reports, cfg) else {
        return;
    };
    if let Some(bytes) = report_outer(fx, r, &mutate(&r.inner, script)) {
        verify_and_open_report(fx, r.meter, &bytes);
    }
}

// ---------------------------------------------------------------------------
// Key delivery

/// `delivery::peek_key_delivery` on arbitrary bytes.
pub fn peek_key_delivery(data: &[u8]) {
    let _ = delivery::peek_key_delivery(data);
}

/// `delivery::open_key_delivery` on arbitrary bytes.
pub fn open_key_delivery(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    if let Ok(m) = open_delivery(fx, data) {
        use_material(&m);
    }
}

/// `delivery::open_key_delivery` on an edited valid key delivery.
pub fn open_key_delivery_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    if let Ok(m) = open_delivery(fx, &mutate(&fx.delivery.sealed, script)) {
        use_material(&m);
    }
}

/// A key delivery whose inner COSE_Encrypt was edited and then correctly
/// re-signed by the manager: reaches the recipient look-up, the ephemeral
/// key, ECDH, HKDF and the AEAD.
pub fn key_delivery_inner_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    if let Some(bytes) = delivery_outer(fx, &mutate(&fx.delivery.inner, script))
        && let Ok(m) = open_delivery(fx, &bytes)
    {
        use_material(&m);
    }
}

/// A key delivery whose plaintext (the key material CBOR) was edited and
/// then correctly encrypted and signed: reaches `GroupKeyMaterial::from_cbor`
/// behind the AEAD and the group/epoch check after it.
pub fn key_delivery_material_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    if let Some(bytes) = delivery_from_material(fx, &mutate(&fx.material_cbor, script))
        && let Ok(m) = open_delivery(fx, &bytes)
    {
        use_material(&m);
    }
}

// ---------------------------------------------------------------------------
// Single-message services

/// `single::decrypt_from` on arbitrary bytes.
pub fn decrypt_from(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let _ = single::decrypt_from(
        fx.member.id().as_bytes(),
        fx.member.agreement_secret(),
        data,
        SINGLE_AAD,
    );
}

/// `single::decrypt_from` on an edited valid COSE_Encrypt.
pub fn decrypt_from_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    let _ = single::decrypt_from(
        fx.member.id().as_bytes(),
        fx.member.agreement_secret(),
        &mutate(&fx.single_sealed, script),
        SINGLE_AAD,
    );
}

/// `single::mac0_verify` on arbitrary bytes.
pub fn mac0_verify(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let _ = single::mac0_verify(&fx.mac_key, data, MAC_AAD);
}

/// `single::mac0_verify` on an edited valid COSE_Mac0.
pub fn mac0_verify_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    let _ = single::mac0_verify(&fx.mac_key, &mutate(&fx.mac_sealed, script), MAC_AAD);
}

// ---------------------------------------------------------------------------
// Key material and replay windows

/// `GroupKeyMaterial::from_cbor` on arbitrary bytes; decoded material is
/// then used (context derivation, re-encoding).
pub fn group_key_material_from_cbor(data: &[u8]) {
    if let Ok(m) = GroupKeyMaterial::from_cbor(data) {
        use_material(&m);
    }
}

/// `GroupKeyMaterial::from_cbor` on edited valid key material.
pub fn group_key_material_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    group_key_material_from_cbor(&mutate(&fx.material_cbor, script));
}

/// `SeqWindow::from_bytes` on arbitrary bytes; a decoded window is then
/// used (re-encoding, checks and commits around its edge).
pub fn seq_window_from_bytes(data: &[u8]) {
    if let Ok(w) = SeqWindow::from_bytes(data) {
        use_window(w);
    }
}

/// `SeqWindow::from_bytes` on an edited valid window (config bit 0: the
/// fixture's 256-bit window with history, or an empty default window).
pub fn seq_window_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let base = if cfg & 1 == 0 {
        fx.window.to_bytes()
    } else {
        SeqWindow::new().to_bytes()
    };
    seq_window_from_bytes(&mutate(&base, script));
}

// ---------------------------------------------------------------------------
// Credentials

/// `EntityCredential::from_cose_key_set` on arbitrary bytes.
pub fn entity_credential_from_cose_key_set(data: &[u8]) {
    if let Ok(c) = EntityCredential::from_cose_key_set(data) {
        let _ = c.to_cose_key_set();
        let _ = c.ed25519_to_pkcs8_pem();
    }
}

/// `PublicCredential::from_cose_key_set` on arbitrary bytes.
pub fn public_credential_from_cose_key_set(data: &[u8]) {
    if let Ok(c) = PublicCredential::from_cose_key_set(data) {
        let _ = c.to_cose_key_set();
        let _ = c.ed25519_public_pem();
    }
}

/// `TrustStore::from_cose_key_set` on arbitrary bytes.
pub fn trust_store_from_cose_key_set(data: &[u8]) {
    if let Ok(t) = TrustStore::from_cose_key_set(data) {
        use_trust_store(&t);
    }
}

/// All three COSE_KeySet readers on an edited valid file; the config byte
/// picks the private file, the public file or the trust store.
pub fn cose_key_set_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let base = match cfg % 3 {
        0 => &fx.private_set,
        1 => &fx.public_set,
        _ => &fx.trust_set,
    };
    let bytes = mutate(base, script);
    entity_credential_from_cose_key_set(&bytes);
    public_credential_from_cose_key_set(&bytes);
    trust_store_from_cose_key_set(&bytes);
}

/// `PublicCredential::ed25519_from_public_pem` on arbitrary text.
pub fn public_key_from_pem(data: &[u8]) {
    let _ = PublicCredential::ed25519_from_public_pem(&as_text(data));
}

/// `EntityCredential::from_ed25519_pkcs8_pem` on arbitrary text.
pub fn entity_credential_from_pem(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let _ =
        EntityCredential::from_ed25519_pkcs8_pem(fx.member.id().clone(), &as_text(data), &X_SECRET);
}

/// Both PEM readers on an edited valid DER document (PKCS#8 if config bit
/// 0 is clear, else SPKI) wrapped in correct PEM armour, so that the DER
/// decoders behind the base64 layer are reached.
pub fn pem_der_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (cfg, script) = config(data);
    let private = cfg & 1 == 0;
    let base = if private { &fx.pkcs8_der } else { &fx.spki_der };
    let Some(text) = der_to_pem(private, &mutate(base, script)) else {
        return;
    };
    let _ = PublicCredential::ed25519_from_public_pem(&text);
    let _ = EntityCredential::from_ed25519_pkcs8_pem(fx.member.id().clone(), &text, &X_SECRET);
}

// ---------------------------------------------------------------------------
// Signed statements

/// Parses, then verifies with the manager's key.
fn check_statement(fx: &Fixture, bytes: &[u8]) {
    if let Ok(st) = UnverifiedStatement::parse(bytes, STATEMENT_LIMIT) {
        let _ = st.signer();
        let key = fx.manager.signing_key().verifying_key();
        let _ = st.verify(&key, STATEMENT_LABEL);
    }
}

/// `UnverifiedStatement::parse` and `verify` on arbitrary bytes.
pub fn statement_verify(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    check_statement(fx, data);
}

/// `UnverifiedStatement::parse` and `verify` on an edited valid statement.
pub fn statement_mutated(data: &[u8]) {
    let Some(fx) = fixture() else {
        return;
    };
    let (_, script) = config(data);
    check_statement(fx, &mutate(&fx.statement, script));
}

// ---------------------------------------------------------------------------
// Identifiers

/// `SeqNum::from_partial_iv` on arbitrary bytes (and the round trip back).
pub fn seq_num_from_partial_iv(data: &[u8]) {
    if let Ok(n) = SeqNum::from_partial_iv(data) {
        let _ = SeqNum::from_partial_iv(&n.partial_iv());
    }
}

/// `EntityId::from_bytes` on arbitrary bytes (and the other id
/// constructors on the same bytes).
pub fn entity_id_from_bytes(data: &[u8]) {
    if let Ok(id) = EntityId::from_bytes(data) {
        let _ = id.as_str().parse::<EntityId>();
    }
    let _ = GroupId::new(data);
    let _ = SenderId::new(data);
    let _ = crate::ids::KeyId::new(data);
}
