//! Identifiers: the AE-ID of an entity and back, a CSE as sealcast knows
//! it, and resource addresses in SP-relative or absolute form (TS-0001
//! §7.2).

use sealcast_core::ids::EntityId;

use crate::{Error, Result};

/// The AE-ID of entity `x`: `Cx` (a CSE-relative AE-ID the AE chooses,
/// TS-0001 §7.2). An entity id may hold `:`, which a resource name may not
/// (it is the `cnf` separator and a URI scheme mark); such an id is refused
/// with that reason.
pub fn ae_id(entity: &EntityId) -> Result<String> {
    fit(entity)?;
    Ok(format!("C{}", entity.as_str()))
}

/// The AE-ID of the AE that hosts manager `x`'s `<group>` resources on the
/// field CSE: `Sx`. Entity AEs start with `C`, so no entity can take it.
pub fn group_host_ae_id(manager: &EntityId) -> Result<String> {
    fit(manager)?;
    Ok(format!("S{}", manager.as_str()))
}

fn fit(entity: &EntityId) -> Result<()> {
    if entity.as_str().contains(':') {
        return Err(Error::UnfitId {
            id: entity.as_str().to_owned(),
            reason: "':' is not allowed in a oneM2M resource name; use another id for this transport",
        });
    }
    Ok(())
}

/// The entity behind an originator as a CSE reports it (a `cr` or an
/// `X-M2M-Origin`): `Cx`, `/<cse-id>/Cx` (SP-relative) or
/// `//<sp-id>/<cse-id>/Cx` (absolute) all name `x`. Anything else — a CSE,
/// an `S` AE, an id that is not an entity id — is `None`.
pub fn entity_of_originator(originator: &str) -> Option<EntityId> {
    let last = originator.rsplit('/').next()?;
    let name = last.strip_prefix('C')?;
    EntityId::new(name).ok()
}

/// A CSE as sealcast addresses it: where its binding listens
/// (`http://host:port`, or `mqtt://broker:port/<cse-id>` for the MQTT
/// binding), its
/// CSE-ID, its `<CSEBase>` resource name and its service provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CseBase {
    /// `http://host:port` (no path), or `mqtt://broker:port/<cse-id>`.
    pub url: String,
    /// The CSE-ID without its leading `/` (`id-mn`).
    pub cse_id: String,
    /// The `<CSEBase>` resource name (`cse-mn`).
    pub name: String,
    /// The SP-ID without its leading `//` (`sealcast.example`).
    pub sp_id: String,
}

impl CseBase {
    /// The CSE described by its `m2m:cb` resource (the answer to a
    /// RETRIEVE of `<url>/<name>`).
    pub fn from_cse_base(url: &str, cb: &serde_json::Value) -> Result<Self> {
        let cb = cb
            .get("m2m:cb")
            .ok_or(Error::Malformed("no m2m:cb in the CSEBase"))?;
        let text = |k: &'static str| {
            cb.get(k)
                .and_then(serde_json::Value::as_str)
                .ok_or(Error::Malformed("CSEBase without csi, rn or spi"))
        };
        let cse_id = text("csi")?.trim_start_matches('/').to_owned();
        let name = text("rn")?.to_owned();
        let sp_id = text("spi")?.trim_start_matches('/').to_owned();
        for part in [&cse_id, &name, &sp_id] {
            if part.is_empty() || part.contains('/') {
                return Err(Error::Malformed(
                    "CSEBase csi, rn or spi not a single segment",
                ));
            }
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            cse_id,
            name,
            sp_id,
        })
    }

    /// The resource `<CSEBase>/<rest>` of this CSE, as the HTTP path a
    /// request to *any* CSE of the service provider carries (TS-0009
    /// §6.2.2.2: `/~/` SP-relative, `/_/` absolute). An empty `rest` is the
    /// CSEBase.
    pub fn path(&self, addressing: Addressing, rest: &str) -> String {
        let mut p = match addressing {
            Addressing::SpRelative => format!("/~/{}/{}", self.cse_id, self.name),
            Addressing::Absolute => format!("/_/{}/{}/{}", self.sp_id, self.cse_id, self.name),
        };
        if !rest.is_empty() {
            p.push('/');
            p.push_str(rest);
        }
        p
    }

    /// The same resource as a oneM2M ID in a primitive:
    /// `/<cse-id>/<name>/<rest>` or `//<sp-id>/<cse-id>/…`. sealcast puts
    /// SP-relative ids in the references it stores (`mid`, `acpi`): ACME
    /// 2026.5.3 does not resolve an absolute `acpi` ("Referenced `<ACP>`
    /// resource not found"), while it accepts absolute request targets.
    pub fn id(&self, addressing: Addressing, rest: &str) -> String {
        let p = self.path(addressing, rest);
        match addressing {
            Addressing::SpRelative => p.trim_start_matches("/~").to_owned(),
            Addressing::Absolute => format!("/{}", p.trim_start_matches("/_")),
        }
    }
}

/// How sealcast names resources on other CSEs (TS-0001 §7.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Addressing {
    /// `/<cse-id>/<resource>` — within one service provider (the default).
    #[default]
    SpRelative,
    /// `//<sp-id>/<cse-id>/<resource>`.
    Absolute,
}

impl Addressing {
    /// Parses `sp-relative` or `absolute`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sp-relative" => Some(Self::SpRelative),
            "absolute" => Some(Self::Absolute),
            _ => None,
        }
    }
}
