//! `sealcast manager serve`: the group manager as a service — its config
//! file applied to the store, its single-instance lock, its control socket.

use super::*;

/// The control socket a manager config names: `control_socket`, or
/// `manager.sock` in its `state_dir` (relative to the config's directory).
pub fn control_socket_path(config_path: &Path) -> Result<PathBuf> {
    let (config, base): (ManagerFile, _) = read_config(config_path)?;
    Ok(manager_socket(&config, &base))
}

fn manager_socket(config: &ManagerFile, base: &Path) -> PathBuf {
    config.control_socket.as_ref().map_or_else(
        || resolve(base, &config.state_dir).join(sealcast_node::control::SOCKET_NAME),
        |p| resolve(base, p),
    )
}

/// The name of the manager's instance lock in its state directory.
pub const MANAGER_LOCK: &str = "manager.lock";

/// Takes the manager's single-instance lock on `state_dir`, or says which
/// manager holds it.
fn lock_state_dir(state_dir: &Path) -> Result<sealcast_store::StateLock> {
    sealcast_store::StateLock::acquire(
        &state_dir.join(MANAGER_LOCK),
        state_dir,
        std::time::Duration::ZERO,
    )
    .map_err(|e| match e {
        sealcast_store::Error::Locked { holder, .. } => CliError::other(format!(
            "another manager{} is running on {}; stop it first (one manager per state_dir; several managers share a PostgreSQL database from different state_dirs)",
            holder.map_or_else(String::new, |pid| format!(" (pid {pid})")),
            state_dir.display()
        )),
        e => failed("cannot lock the state directory", e),
    })
}

/// Runs `sealcast manager serve`.
pub fn manager(args: &ServeArgs) -> Result<()> {
    init_logs();
    let (config, base): (ManagerFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    let credential = load_private_key(&resolve(&base, &config.key))?;
    let manager_id = credential.id().clone();
    // One manager per state directory, for its whole life: taken before the
    // KEK or the store is touched, released by the kernel however it exits.
    let _instance = lock_state_dir(&state_dir)?;
    let kek_path = resolve(&base, &config.kek);
    let (kek, created) =
        Kek::load_or_create(&kek_path).map_err(|e| failed("cannot load or create the KEK", e))?;
    if created {
        info!(path = %kek_path.display(), "generated a new key-encryption key");
    }
    let mut store: Box<dyn ManagerStore> = match &config.postgres {
        Some(url) => Box::new(
            match &config.postgres_schema {
                Some(schema) => PgStore::connect_in_schema(url, schema, kek),
                None => PgStore::connect(url, kek),
            }
            .map_err(|e| failed("cannot open PostgreSQL", e))?,
        ),
        None => {
            let path = config
                .sqlite
                .as_ref()
                .map_or_else(|| state_dir.join("manager.db"), |p| resolve(&base, p));
            Box::new(SqliteStore::open(&path, kek).map_err(|e| failed("cannot open SQLite", e))?)
        }
    };
    let audit_path = config
        .audit_log
        .as_ref()
        .map_or_else(|| state_dir.join("audit.jsonl"), |p| resolve(&base, p));
    let audit = AuditLog::open(&audit_path).map_err(|e| failed("cannot open the audit log", e))?;
    let (mut manager, saved) = sealcast_store::persist::load_manager(store.as_mut(), credential)
        .map_err(|e| failed("cannot restore the manager from its store", e))?;
    manager.set_resend_limits(
        config.resend_max_interval_s.saturating_mul(1000),
        config.resend_max_per_round,
    );

    // What the config asks for and the store does not hold yet.
    let mut enrolments = Vec::new();
    let mut removed = std::collections::BTreeSet::new();
    for e in &config.enrol {
        let id = entity(&e.id)?;
        if manager.kind_of(&id).is_some() {
            continue;
        }
        // Removed by an operator: the file does not bring it back.
        if store
            .was_removed(&id)
            .map_err(|e| failed("cannot read the store", e))?
        {
            warn!(
                entity = %id,
                "the config enrols {id}, but it was removed with `sealcast node remove`; the store is the authority, so it is not enrolled again. To bring it back, run: sealcast group enrol --config <manager.toml> --public-key <its .pub>"
            );
            removed.insert(id);
            continue;
        }
        let credential = load_public_key(&resolve(&base, &e.public_key))?;
        if *credential.id() != id {
            return Err(CliError::usage(format!(
                "enrolment {id}: the public key file is for {}",
                credential.id()
            )));
        }
        let kind = EntityKind::from(e.kind);
        let agent = e.agent.as_deref().map(entity).transpose()?;
        enrolments.push((credential, kind, agent));
    }
    let mut creates = Vec::new();
    let mut additions = Vec::new();
    for g in &config.group {
        let group = group_id(&g.id)?;
        if manager.material(&group).is_none() {
            let scheme = RekeyScheme::from(g.scheme);
            creates.push((group.clone(), scheme));
        }
        // The store is the authority once a group exists: the config seeds a
        // group's members only while the store holds no trace of it (absent,
        // or still at its creation epoch 0 without members — a first start
        // that stopped between creating and filling it). Afterwards an
        // eviction or a rekey recorded in the store is never undone by a
        // restart; what the config still lists is logged and left out.
        let existing = manager.members(&group);
        let seeding = match manager.material(&group) {
            None => true,
            Some(m) => m.epoch().get() == 0 && existing.is_none_or(|x| x.is_empty()),
        };
        let mut missing = Vec::new();
        for m in &g.members {
            let id = entity(&m.id)?;
            if existing.is_some_and(|x| x.contains_key(&id)) || removed.contains(&id) {
                continue;
            }
            let role = Role::from(m.role);
            if !seeding {
                let role_name = m.role.as_str();
                warn!(
                    group = %g.id,
                    member = %id,
                    "the config lists {id} in group {} but the store does not hold it as a member (it was evicted, or added to the config after the group was created); the store is the authority, so it is not added. If it should be a member, run: sealcast group add --config <manager.toml> --group {} --member {id}:{role_name}",
                    g.id,
                    g.id
                );
                continue;
            }
            missing.push((id, role));
        }
        if !missing.is_empty() {
            additions.push((group, missing));
        }
    }
    let topics = topics(config.topic_prefix.as_deref())?;
    let rules = config
        .misbehaviour
        .iter()
        .map(MisbehaviourEntry::rule)
        .collect::<Result<Vec<_>>>()?;
    let grants = config
        .access_token
        .iter()
        .enumerate()
        .map(|(i, t)| t.grant(i))
        .collect::<Result<Vec<_>>>()?;
    let socket = manager_socket(&config, &base);
    let control = control_settings(&config)?;
    let metrics_at = config.metrics_listen;
    let broker = broker_url(&config.broker, &base, &broker_security!(config, client_id))?;
    let mut link = link_config(
        config.transport,
        &broker,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, &manager_id)),
    )?;
    if let Some(section) = config.coap.as_ref().and_then(|c| c.bearer.as_ref()) {
        match (
            &section.service,
            &section.service_public_key,
            &section.devices_dir,
        ) {
            (Some(service), None, None) => {
                link = link.with_bearer(sealcast_node::link::bearer::BearerRole::Sender {
                    service: entity(service)?,
                });
            }
            _ => {
                return Err(CliError::usage(
                    "[coap.bearer] of the manager: set only service (the gateway that runs the bearer)",
                ));
            }
        }
    }
    runtime()?.block_on(serve_manager(
        manager,
        store,
        audit,
        saved,
        &link,
        topics,
        (enrolments, creates, additions, rules, grants),
        (&socket, control),
        metrics_at,
    ))
}

/// The control socket's mode, group and administration policy.
type ControlSettings = (
    u32,
    Option<u32>,
    Option<sealcast_node::control::AdminAccess>,
);

/// `control_socket_mode`, `control_socket_group` and `[[admin_acp]]`.
fn control_settings(config: &ManagerFile) -> Result<ControlSettings> {
    let policy = admin_policy(&config.admin_acp)?;
    let mode = match config
        .control_socket_mode
        .as_deref()
        .map(|m| m.trim_start_matches("0o"))
    {
        None | Some("600" | "0600") => 0o600,
        Some("660" | "0660") => 0o660,
        Some("666" | "0666") => 0o666,
        Some(other) => {
            return Err(CliError::usage(format!(
                "control_socket_mode {other:?}: use \"600\" (owner only), \"660\" (and its group) or \"666\" (every local user)"
            )));
        }
    };
    if mode != 0o600 && policy.is_empty() {
        return Err(CliError::usage(
            "control_socket_mode opens the control socket to other users: add [[admin_acp]] rules that say who may do what (without them every user who can reach it could administer everything)",
        ));
    }
    let gid = match config.control_socket_group.as_deref() {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => std::fs::read_to_string("/etc/group")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let mut f = l.split(':');
                    (f.next() == Some(g)).then(|| f.nth(1)?.parse().ok())?
                })
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "control_socket_group {g:?}: no such group in /etc/group (give its number instead)"
                    ))
                })?,
        }),
    };
    let admin = (!policy.is_empty()).then(|| {
        sealcast_node::control::AdminAccess::new(
            policy,
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        )
    });
    Ok((mode, gid, admin))
}

type Plan = (
    Vec<(
        sealcast_core::credential::PublicCredential,
        EntityKind,
        Option<EntityId>,
    )>,
    Vec<(GroupId, RekeyScheme)>,
    Vec<(GroupId, Vec<(EntityId, Role)>)>,
    Vec<sealcast_group::status::PolicyRule>,
    Vec<sealcast_node::manager::TokenGrant>,
);

// The manager's parts, as `manager` assembled them from the config file.
#[allow(clippy::too_many_arguments)]
async fn serve_manager(
    manager: Manager,
    store: Box<dyn ManagerStore>,
    audit: AuditLog,
    saved: BTreeMap<GroupId, sealcast_core::ids::Epoch>,
    link: &LinkConfig,
    topics: TopicScheme,
    (enrolments, creates, additions, rules, grants): Plan,
    (socket, (mode, gid, admin)): (&Path, ControlSettings),
    metrics_at: Option<std::net::SocketAddr>,
) -> Result<()> {
    let id = manager.id().clone();
    // The control socket first: a second manager on this state directory
    // stops here, before it connects to the broker under the same client id.
    let control = sealcast_node::control::bind_shared(socket, mode, gid)
        .map_err(|e| failed("the manager could not open its control socket", e))?;
    let handle =
        match sealcast_node::manager::spawn_on(manager, store, audit, saved, link, topics).await {
            Ok(h) => h,
            Err(e) => {
                control.discard();
                return Err(failed("the manager could not start", e));
            }
        };
    info!(manager = %id, transport = %link.transport(), "manager running");
    if !rules.is_empty() {
        let n = rules.len();
        handle
            .set_misbehaviour_policy(rules)
            .await
            .map_err(|e| failed("cannot set the misbehaviour policy", e))?;
        info!(rules = n, "misbehaviour policy set");
    }
    for (credential, kind, agent) in enrolments {
        let who = credential.id().clone();
        handle
            .enrol(credential, kind, agent)
            .await
            .map_err(|e| failed(&format!("cannot enrol {who}"), e))?;
        info!(entity = %who, ?kind, "enrolled");
    }
    for (group, scheme) in creates {
        handle
            .create_group(group.clone(), AeadAlg::A128Gcm, scheme)
            .await
            .map_err(|e| failed("cannot create a group", e))?;
        info!(group = %group.name(), ?scheme, "group created");
    }
    for (group, members) in additions {
        let n = members.len();
        handle
            .add_members(group.clone(), members)
            .await
            .map_err(|e| failed("cannot add members", e))?;
        info!(group = %group.name(), added = n, "members added");
    }
    if !grants.is_empty() {
        let n = grants.len();
        handle
            .set_token_grants(grants)
            .await
            .map_err(|e| failed("cannot set the access-token grants", e))?;
        info!(
            grants = n,
            "access tokens issued; each is renewed at half its lifetime"
        );
    }
    // `sealcast group …` from now on; stopped (socket removed) before the manager.
    let control = match control.serve_with(handle.clone(), admin) {
        Ok(c) => c,
        Err(e) => {
            handle.stop().await;
            return Err(failed("the manager could not serve its control socket", e));
        }
    };
    if let Some(addr) = metrics_at {
        let registry = Arc::new(metrics::Registry::default());
        if let Err(e) = metrics::start(addr, registry.clone()).await {
            control.shutdown().await;
            handle.stop().await;
            return Err(e);
        }
        registry.set_ready();
        tokio::spawn(watch_manager(handle.clone(), registry));
    }
    let waited = wait_for_stop_signal().await;
    control.shutdown().await;
    waited?;
    handle.stop().await;
    info!("manager stopped");
    Ok(())
}

/// Refreshes the manager's gauges every two seconds.
async fn watch_manager(
    handle: sealcast_node::manager::ManagerHandle,
    registry: Arc<metrics::Registry>,
) {
    loop {
        if let Ok(groups) = handle.groups().await {
            for g in groups {
                let name = g.group.name().to_string();
                let labels = [("group", name.as_str())];
                registry.set(
                    "sealcast_group_epoch",
                    "The group's current epoch.",
                    &labels,
                    f64::from(g.epoch.get()),
                );
                registry.set(
                    "sealcast_group_members",
                    "Members of the group.",
                    &labels,
                    g.members as f64,
                );
                registry.set(
                    "sealcast_group_members_current",
                    "Members that acknowledged the current epoch.",
                    &labels,
                    g.current as f64,
                );
                registry.set(
                    "sealcast_deliveries_pending",
                    "Members the current epoch is still to reach (re-sent until acknowledged).",
                    &labels,
                    g.members.saturating_sub(g.current) as f64,
                );
            }
        }
        registry.set(
            "sealcast_resends_total",
            "Key deliveries re-sent to members that had not acknowledged.",
            &[],
            handle.resends() as f64,
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
