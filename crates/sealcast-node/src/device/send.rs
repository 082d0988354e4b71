//! One-shot sends (`sealcast device send`): the node started on its state
//! file for one message, after the manager confirmed the current keys.

use super::*;

/// How long a one-shot send waits for the manager to confirm the current
/// key material before it gives up (`sealcast device send --wait`).
pub const DEFAULT_CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a one-shot send waits for the manager's answer before it pulls
/// again.
const PULL_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Seals `payload` for `group` on `channel` once and publishes it, as the
/// node of `config`: for one-shot senders (`sealcast device send`).
///
/// It starts the node on its state file (taking the file's lock, so it
/// refuses while a `device run` of the same entity holds it), first asks
/// the manager for the group's current key material (a pull) and waits up
/// to `confirm_wait` for the answer — installing a newer epoch if the
/// group was rekeyed while the device was off — and only then seals with
/// the next reserved sequence number and publishes. Without the manager's
/// answer it fails and sends nothing: a message under a stale key would be
/// dropped by every receiver while the sender believed it sent. Returns the
/// sealed bytes and the sequence number used.
pub async fn send_once(
    mut config: NodeConfig,
    group: &GroupId,
    channel: GroupChannel,
    payload: &[u8],
    confirm_wait: std::time::Duration,
) -> Result<(Vec<u8>, u64)> {
    if config.state_file.is_none() {
        return Err(Error::Runtime("a one-shot send needs a state file".into()));
    }
    let (events, mut seen) = mpsc::unbounded_channel();
    config.events = events;
    // A client id of its own: the runtime's may still be known to the
    // broker from its last session.
    let client_id = format!(
        "{}-send",
        config.topics.client_id(config.credential.id().as_str())
    );
    // A clean session: a one-shot client leaves nothing queued on the
    // broker behind it.
    config.link = config
        .link
        .with_mqtt_client_id(&client_id)
        .with_persistent_session(false);
    let node = spawn(config).await?;
    let confirmed = async {
        let deadline = tokio::time::Instant::now() + confirm_wait;
        loop {
            // A pull now and again every few seconds: a lost pull or answer
            // must not cost the whole wait.
            node.pull(group).await?;
            let retry_at = (tokio::time::Instant::now() + PULL_RETRY).min(deadline);
            while let Ok(event) = tokio::time::timeout_at(retry_at, seen.recv()).await {
                let event =
                    event.ok_or_else(|| Error::Runtime(format!("node {} stopped", node.id())))?;
                match event.kind {
                    EventKind::Installed { group: g, .. } | EventKind::Current { group: g, .. }
                        if g == *group =>
                    {
                        return Ok(());
                    }
                    _ => {}
                }
            }
            if retry_at >= deadline {
                return Err(Error::Runtime(format!(
                    "the manager did not confirm the current key material of group {} within {} s, so nothing was sent; check that the manager runs, that the broker, topic_prefix and manager_public_key match the manager's, and that this device is a member of the group",
                    group.name(),
                    confirm_wait.as_secs()
                )));
            }
        }
    };
    let result = match confirmed.await {
        Ok(()) => node.send_counted(group, channel, payload).await,
        Err(e) => Err(e),
    };
    node.stop().await;
    result
}
