//! What an attacker or an administrator can do through a CSE, as the
//! demos and tests do it: read a container, post under any originator.

use super::*;

/// What an administrator of the CSEs (any originator the CSE's policy lets
/// read, such as ACME's `CAdmin`) finds as the latest `<contentInstance>`
/// in `entity`'s `container`: its target label and its content — the COSE
/// object, which it cannot open. The fire-safety demo's attacker captures
/// commands this way.
pub async fn read_latest(
    config: &OneM2mLinkConfig,
    originator: &str,
    entity: &EntityId,
    container: &str,
) -> Result<(String, Vec<u8>)> {
    let cses = Cses::discover(config).await?;
    let client = Client::new(originator.to_owned(), config.serialization);
    let path = cses.ae_path(entity, &format!("{container}/la"))?;
    let cin = client
        .expect(Method::GET, &cses.registrar(entity).url, &path, None, None)
        .await?;
    let sgn = serde_json::json!({"m2m:sgn": {"nev": {"rep": cin}}});
    match primitive::parse_notification(&sgn)? {
        Notification::Created { instance, .. } => Ok((instance.target, instance.content)),
        _ => Err(Error::Runtime("not a content instance".into())),
    }
}

/// Creates a `<contentInstance>` through `group`'s fan-out with
/// `originator` in `X-M2M-Origin` — what any client can claim to a CSE
/// that does not authenticate its originators (ACME trusts the header).
/// The demo's attacker uses it to pose as the gateway; sealcast must refuse
/// what arrives however the CSE accepted it. Sent to the CSE where the
/// originator's AE is registered (the manager's: the infrastructure CSE,
/// which forwards it). Returns the CSE's status for each member, or its one
/// status for the whole request when it refused it (ACME answers 4103 when
/// a member's container refuses the originator).
pub async fn publish_group_as(
    config: &OneM2mLinkConfig,
    originator: &str,
    group: &GroupId,
    target: &str,
    bytes: &[u8],
) -> Result<Vec<u16>> {
    let cses = Cses::discover(config).await?;
    let path = cses.group_path(group, "fopt")?;
    let cse = match sealcast_onem2m::entity_of_originator(originator) {
        Some(e) => cses.registrar(&e),
        None => &cses.field,
    };
    let client = Client::new(originator.to_owned(), config.serialization);
    let cin = resource::content_instance(bytes, target);
    let (rsc, answer) = client
        .request(
            Method::POST,
            &cse.url,
            &path,
            Some(Type::ContentInstance),
            Some(&cin),
        )
        .await?;
    if !(2000..3000).contains(&rsc) {
        return Ok(vec![rsc]);
    }
    Ok(primitive::aggregated_status(&answer)?)
}

/// Creates a `<contentInstance>` in `to`'s inbox with `originator` in
/// `X-M2M-Origin` (see [`publish_group_as`]): an attacker's report or
/// command posted under another entity's name.
pub async fn send_as(
    config: &OneM2mLinkConfig,
    originator: &str,
    to: &EntityId,
    target: &str,
    bytes: &[u8],
) -> Result<()> {
    let cses = Cses::discover(config).await?;
    let path = cses.ae_path(to, INBOX_CONTAINER)?;
    create_as(cses.registrar(to), config, originator, &path, target, bytes).await?;
    Ok(())
}

async fn create_as(
    cse: &CseBase,
    config: &OneM2mLinkConfig,
    originator: &str,
    path: &str,
    target: &str,
    bytes: &[u8],
) -> Result<serde_json::Value> {
    let client = Client::new(originator.to_owned(), config.serialization);
    let cin = resource::content_instance(bytes, target);
    client
        .expect(
            Method::POST,
            &cse.url,
            path,
            Some(Type::ContentInstance),
            Some(&cin),
        )
        .await
}
