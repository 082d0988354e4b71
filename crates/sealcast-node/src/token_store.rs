//! A node's access-control token on disk (`sealcast_group::token`): the
//! newest token the manager issued to this node, kept in
//! `access-token.cbor` beside its state file (0600, written atomically
//! before the node uses it) and read back — and verified again — at start,
//! so the node goes on presenting it while the manager is unreachable,
//! until it expires.

use sealcast_core::credential::PublicCredential;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_group::token::AccessToken;
use sealcast_store::DeviceStateFile;

use crate::{Error, Result};

/// The file name of a node's token.
pub const TOKEN_FILE: &str = "access-token.cbor";

/// What [`TokenStore::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenApplied {
    /// The token is newer than the one held: saved, then held.
    Changed,
    /// The very token held (a re-send): nothing to do.
    Same,
}

/// The token a node holds, and where it keeps it.
#[derive(Debug)]
pub struct TokenStore {
    held: Option<(AccessToken, Vec<u8>)>,
    file: Option<DeviceStateFile>,
}

impl TokenStore {
    /// Opens the token file beside `state_file` (in memory when None) and
    /// verifies what it holds: a file that is not `manager`'s token for
    /// `me` stops the start.
    pub fn open(
        state_file: Option<&DeviceStateFile>,
        manager: &PublicCredential,
        me: &EntityId,
    ) -> Result<Self> {
        let file = state_file.map(|f| DeviceStateFile::new(f.path().with_file_name(TOKEN_FILE)));
        let held = match &file {
            Some(f) => match f.read()? {
                Some(bytes) => {
                    let token = AccessToken::open(&bytes, manager)
                        .ok()
                        .filter(|t| t.subject == *me)
                        .ok_or_else(|| {
                            Error::Runtime(format!(
                                "access token file {} is not {}'s token for {me}; move it away, and the node gets a new one from the manager",
                                f.path().display(),
                                manager.id()
                            ))
                        })?;
                    Some((token, bytes.to_vec()))
                }
                None => None,
            },
            None => None,
        };
        Ok(Self { held, file })
    }

    /// The token held (it may have expired).
    pub fn held(&self) -> Option<&AccessToken> {
        self.held.as_ref().map(|(t, _)| t)
    }

    /// The bytes to carry in a message to `group` at `now_s`: the held
    /// token if it is valid then and one of its grants names the group (or
    /// every group).
    pub fn for_group(&self, group: &GroupId, now_s: u64) -> Option<&[u8]> {
        let (token, bytes) = self.held.as_ref()?;
        (token.valid_at(now_s).is_ok()
            && token
                .scope
                .iter()
                .any(|g| g.group.as_ref().is_none_or(|x| x == group)))
        .then_some(bytes.as_slice())
    }

    /// A token from the manager: verified (signer, holder), refused if
    /// expired or older than the one held, saved before it is held.
    pub fn apply(
        &mut self,
        bytes: &[u8],
        manager: &PublicCredential,
        me: &EntityId,
        now_s: u64,
    ) -> Result<TokenApplied> {
        let token = AccessToken::open(bytes, manager).map_err(|e| {
            Error::Runtime(format!(
                "access token not signed by the manager {} ({e})",
                manager.id()
            ))
        })?;
        if token.subject != *me {
            return Err(Error::Runtime("access token for another entity".into()));
        }
        if let Some((held, _)) = &self.held {
            if held.id == token.id && held.issued_at == token.issued_at {
                return Ok(TokenApplied::Same);
            }
            if token.issued_at <= held.issued_at {
                return Err(Error::Runtime(
                    "access token older than the one held (a replay)".into(),
                ));
            }
        }
        if now_s >= token.expires {
            return Err(Error::Runtime("access token expired on arrival".into()));
        }
        if let Some(f) = &self.file {
            f.write(bytes)?;
        }
        self.held = Some((token, bytes.to_vec()));
        Ok(TokenApplied::Changed)
    }
}

/// The token held beside `state_file`, verified with `manager` (for
/// `sealcast device token` and `sealcast agent token`); None when the node
/// holds none.
pub fn read_held(
    state_file: &DeviceStateFile,
    manager: &PublicCredential,
    me: &EntityId,
) -> Result<Option<AccessToken>> {
    Ok(TokenStore::open(Some(state_file), manager, me)?
        .held
        .map(|(t, _)| t))
}
