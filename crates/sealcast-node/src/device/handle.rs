//! The handle callers hold to a running field node: sends, key material
//! queries, pulls and stop, each a request to its task.

use super::*;

/// A handle to a running field node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(super) id: EntityId,
    pub(super) requests: mpsc::Sender<Request>,
}

impl NodeHandle {
    /// The node's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Seals and publishes a broadcast as this node (it must be an
    /// authorized signer of `group`). Returns the sealed bytes.
    pub async fn send(
        &self,
        group: &GroupId,
        channel: GroupChannel,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        Ok(self.send_counted(group, channel, payload).await?.0)
    }

    /// [`NodeHandle::send`], also returning the sequence number used.
    pub async fn send_counted(
        &self,
        group: &GroupId,
        channel: GroupChannel,
        payload: &[u8],
    ) -> Result<(Vec<u8>, u64)> {
        self.ask(|reply| Request::Send {
            group: group.clone(),
            channel,
            payload: payload.to_vec(),
            reply,
        })
        .await?
    }

    /// Sends the request `make` builds around a reply channel, and waits
    /// for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T> {
        let stopped = || Error::Runtime(format!("node {} stopped", self.id));
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// The node's current key material of `group` (None: not a member).
    /// The demo's insider attacker uses it; so would an operator's probe.
    pub async fn material(&self, group: &GroupId) -> Result<Option<GroupKeyMaterial>> {
        self.ask(|reply| Request::Material {
            group: group.clone(),
            reply,
        })
        .await
    }

    /// Sends the manager a signed pull for the current key material of
    /// `group`; its answer is reported as an [`EventKind::Installed`] or
    /// [`EventKind::Current`] event.
    pub async fn pull(&self, group: &GroupId) -> Result<()> {
        self.ask(|reply| Request::Pull {
            group: group.clone(),
            reply,
        })
        .await
    }

    /// Stops the node once it finished the message in hand (its state is
    /// persisted after every message) and disconnects it.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}
