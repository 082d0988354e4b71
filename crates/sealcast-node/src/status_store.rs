//! A node's status repository on disk: the newest authorization status
//! list it verified (`sealcast_group::status`), kept in `status.cbor`
//! beside its state file (0600, written atomically before the list takes
//! effect) and read back at start — so it is enforced across restarts and
//! while the list's issuer is unreachable.

use sealcast_core::ids::EntityId;
use sealcast_group::status::{Status, StatusList, StatusRepository};
use sealcast_store::DeviceStateFile;

use crate::{Error, Result};

/// The file name of a node's status repository (the manager's list).
pub const STATUS_FILE: &str = "status.cbor";
/// The file name of a DAP's status repository (its headend's list of
/// meters), apart from a gateway's in the same state directory.
pub const DAP_STATUS_FILE: &str = "dap-status.cbor";

/// The status list a node holds, and where it keeps it.
#[derive(Debug)]
pub struct StatusStore {
    repo: StatusRepository,
    file: Option<DeviceStateFile>,
}

impl StatusStore {
    /// Opens the repository `name` beside `state_file` (in memory when
    /// None): the lists are `issuer`'s; a file naming another issuer stops
    /// the start.
    pub fn open(
        state_file: Option<&DeviceStateFile>,
        name: &str,
        issuer: &EntityId,
    ) -> Result<Self> {
        let file = state_file.map(|f| DeviceStateFile::new(f.path().with_file_name(name)));
        let repo = match &file {
            Some(f) => match f.read()? {
                Some(bytes) => StatusRepository::from_bytes(&bytes, issuer).map_err(|e| {
                    Error::Runtime(format!(
                        "status list file {}: {e}; it is not {issuer}'s list — move it away, and the node gets the current one from {issuer}",
                        f.path().display()
                    ))
                })?,
                None => StatusRepository::new(),
            },
            None => StatusRepository::new(),
        };
        Ok(Self { repo, file })
    }

    /// The list held.
    pub fn held(&self) -> Option<&StatusList> {
        self.repo.held()
    }

    /// The status of `entity` (None: in good standing).
    pub fn status_of(&self, entity: &EntityId) -> Option<Status> {
        self.repo.status_of(entity)
    }

    /// A verified list newer than the one held: persisted, then applied.
    /// `Ok(false)`: the held version again (nothing to do); an older list
    /// is refused.
    pub fn apply(&mut self, list: StatusList) -> Result<bool> {
        if !self.repo.check(&list)? {
            return Ok(false);
        }
        let mut next = self.repo.clone();
        next.commit(list);
        if let Some(f) = &self.file {
            f.write(&next.to_bytes()?)?;
        }
        self.repo = next;
        Ok(true)
    }
}
