//! `sealcast agent serve`, `sealcast device run` and `sealcast device send`:
//! the field-node runtime (gateway agent, DAP, device) as a service or a
//! one-shot command.

use super::*;

/// Appends every executed command to a file (and logs it).
#[derive(Debug)]
struct ExecLog {
    path: PathBuf,
}

impl CommandHandler for ExecLog {
    fn execute(&self, c: &VerifiedCommand<'_>) {
        LogHandler.execute(c);
        let line = format!(
            "group={} signer={} seq={} payload={}\n",
            String::from_utf8_lossy(c.group.as_bytes()),
            c.signer,
            c.seq,
            String::from_utf8_lossy(c.payload)
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "exec log not written");
        }
    }
}

/// A node's `[misbehaviour]` section: an agent reports what it sees to the
/// manager unless told not to; a device never does (the manager takes
/// reports from agents only).
fn misbehaviour_watch(
    section: Option<&NodeMisbehaviour>,
    agent: bool,
) -> Result<sealcast_node::device::MisbehaviourWatch> {
    let d = NodeMisbehaviour::default();
    let section = section.unwrap_or(&d);
    if !agent && section.report == Some(true) {
        return Err(CliError::usage(
            "[misbehaviour] report: only agents (gateways) send misbehaviour reports; remove it from a device's config",
        ));
    }
    let interval = section.report_interval_ms.unwrap_or(2000);
    if !(100..=3_600_000).contains(&interval) {
        return Err(CliError::usage(
            "[misbehaviour] report_interval_ms: between 100 and 3600000",
        ));
    }
    Ok(sealcast_node::device::MisbehaviourWatch {
        report: agent && section.report.unwrap_or(true),
        report_interval: std::time::Duration::from_millis(interval),
        max_per_sender_per_minute: (section.max_messages_per_sender_per_minute > 0)
            .then_some(section.max_messages_per_sender_per_minute),
    })
}

pub(super) fn node_config(
    path: &Path,
    handler: Arc<dyn CommandHandler>,
    agent: bool,
) -> Result<(
    NodeConfig,
    Option<std::net::SocketAddr>,
    Option<BearerReload>,
)> {
    let (config, base): (NodeFile, _) = read_config(path)?;
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    let credential = load_private_key(&resolve(&base, &config.key))?;
    let manager = load_public_key(&resolve(&base, &config.manager_public_key))?;
    let rules = config
        .rule
        .iter()
        .map(|r| {
            Ok(Rule {
                on_alert_from: group_id(&r.on_alert_from)?,
                then_command: group_id(&r.then_command)?,
                command: r.payload.as_bytes().to_vec(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let relays_for = config
        .relays_for
        .iter()
        .map(|d| entity(d))
        .collect::<Result<Vec<_>>>()?;
    let send_only = config
        .send_only
        .iter()
        .map(|g| group_id(g))
        .collect::<Result<_>>()?;
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let metrics_at = config.metrics_listen;
    let mut link = link_config(
        config.transport,
        &broker_url(&config.broker, &base, &broker_security!(config))?,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, manager.id())),
    )?;
    let mut reload = None;
    if let Some(section) = config.coap.as_ref().and_then(|c| c.bearer.as_ref()) {
        let (role, r) = bearer_role(section, &resolve(&base, &config.key), &base, &state_dir)?;
        link = link.with_bearer(role);
        reload = r;
    }
    Ok((
        NodeConfig {
            credential,
            manager,
            link,
            topics: topics(config.topic_prefix.as_deref())?,
            rules,
            relays_for,
            send_only,
            handler,
            events,
            state_file: Some(DeviceStateFile::new(state_dir.join("state.cbor"))),
            no_key_warning: (config.no_key_material_warning_s > 0)
                .then(|| std::time::Duration::from_secs(config.no_key_material_warning_s)),
            replay: replay_policies(&config)?,
            access: access_policy(&config.acp)?,
            accept_access_tokens: config.accept_access_tokens,
            misbehaviour: misbehaviour_watch(config.misbehaviour.as_ref(), agent)?,
            max_burst: sealcast_node::device::BURST_MAX,
            audit: Some(audit_config(
                &base,
                &state_dir,
                "audit.jsonl",
                config.audit_log.as_deref(),
                config.audit_max_kib,
                config.audit_keep,
            )?),
        },
        metrics_at,
        reload,
    ))
}

fn run_node(
    mut config: NodeConfig,
    what: &'static str,
    metrics_at: Option<std::net::SocketAddr>,
    bearer: Option<BearerReload>,
) -> Result<()> {
    runtime()?.block_on(async move {
        let registry = Arc::new(metrics::Registry::default());
        if let Some(addr) = metrics_at {
            metrics::start(addr, registry.clone()).await?;
            let (events, seen) = tokio::sync::mpsc::unbounded_channel();
            config.events = events;
            tokio::spawn(count_node_events(seen, registry.clone()));
        }
        let handle = device::spawn(config)
            .await
            .map_err(|e| failed(&format!("the {what} could not start"), e))?;
        info!(id = %handle.id(), "{what} running");
        registry.set_ready();
        match bearer {
            None => wait_for_stop_signal().await?,
            Some(b) => serve_bearer_reloads(b).await?,
        }
        handle.stop().await;
        info!(id = %handle.id(), "{what} stopped");
        Ok(())
    })
}

/// Waits for the stop signal; on each SIGHUP, entitles exactly the devices
/// whose public keys are in the bearer's `devices_dir` (a removed one is
/// revoked: the service moves to a fresh MSK without it).
async fn serve_bearer_reloads(b: BearerReload) -> Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| failed("cannot listen for SIGHUP", e))?;
    let mut stop = Box::pin(wait_for_stop_signal());
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = hangup.recv() => match bearer_devices(&b.devices_dir) {
                Ok(devices) => match b.control.set_devices(devices).await {
                    Ok(c) => info!(entitled = ?c.entitled.iter().map(|d| d.as_str()).collect::<Vec<_>>(), revoked = ?c.revoked.iter().map(|d| d.as_str()).collect::<Vec<_>>(), "SIGHUP: bearer devices reloaded"),
                    Err(e) => warn!(error = %e, "SIGHUP: bearer devices not changed"),
                },
                Err(e) => warn!(error = %e, "SIGHUP: bearer devices not reloaded"),
            },
        }
    }
}

/// Turns a node's events into its metrics.
async fn count_node_events(
    mut seen: tokio::sync::mpsc::UnboundedReceiver<sealcast_node::runtime::Event>,
    registry: Arc<metrics::Registry>,
) {
    use sealcast_node::runtime::EventKind;
    while let Some(event) = seen.recv().await {
        match &event.kind {
            EventKind::Installed { group, epoch } => {
                let g = group.name().to_string();
                registry.inc(
                    "sealcast_key_installs_total",
                    "Key material installed (deliveries, join notices, tree rekeys).",
                    &[("group", &g)],
                );
                registry.set(
                    "sealcast_group_epoch",
                    "The epoch of the key material held.",
                    &[("group", &g)],
                    f64::from(epoch.get()),
                );
            }
            EventKind::Executed { group, .. } => registry.inc(
                "sealcast_messages_opened_total",
                "Commands and alerts opened, verified and executed.",
                &[("group", &group.name().to_string())],
            ),
            EventKind::Rejected { group, reason } => registry.inc(
                "sealcast_messages_refused_total",
                "Commands and alerts refused, by reason.",
                &[
                    ("group", &group.name().to_string()),
                    ("reason", metrics::refusal_reason(reason)),
                ],
            ),
            EventKind::NotMember { group } => registry.inc(
                "sealcast_messages_not_member_total",
                "Messages on a group channel of a group this entity holds no key of.",
                &[("group", &group.name().to_string())],
            ),
            EventKind::CannotOpenDelivery { .. } => registry.inc(
                "sealcast_deliveries_relayed_total",
                "Key deliveries for other entities relayed or overheard (unreadable here).",
                &[],
            ),
            EventKind::Issued { group, .. } => registry.inc(
                "sealcast_commands_issued_total",
                "Commands this gateway sealed and sent by its rules.",
                &[("group", &group.name().to_string())],
            ),
            EventKind::OrderApplied { version, stopped } => {
                registry.inc(
                    "sealcast_transmission_orders_applied_total",
                    "Transmission orders from the manager applied.",
                    &[],
                );
                registry.set(
                    "sealcast_transmission_stopped",
                    "1 while the manager's order stops some of this node's sending, else 0.",
                    &[],
                    if stopped == "-" { 0.0 } else { 1.0 },
                );
                registry.set(
                    "sealcast_transmission_order_version",
                    "The version of the transmission order held.",
                    &[],
                    *version as f64,
                );
            }
            EventKind::OrderRefused { reason } => registry.inc(
                "sealcast_transmission_orders_refused_total",
                "Transmission orders refused, by reason (forged, other-node, stale, replay, conflict, malformed).",
                &[("reason", reason)],
            ),
            EventKind::Burst { group, size } => {
                let g = group.name().to_string();
                registry.inc(
                    "sealcast_bursts_total",
                    "Times queued commands or alerts of a group were opened as one burst (one batch signature verification).",
                    &[("group", &g)],
                );
                registry.add(
                    "sealcast_burst_messages_total",
                    "Commands and alerts opened in bursts.",
                    &[("group", &g)],
                    *size as u64,
                );
            }
            EventKind::Suppressed { group } => registry.inc(
                "sealcast_commands_suppressed_total",
                "Rule commands not sent because the manager's transmission order stops them.",
                &[("group", &group.name().to_string())],
            ),
            _ => {}
        }
    }
}

/// Runs `sealcast agent serve`.
pub fn agent(args: &ServeArgs) -> Result<()> {
    init_logs();
    if metering::has_dap_section(&args.config)? {
        return metering::agent_with_dap(args);
    }
    let (config, metrics_at, bearer) = node_config(&args.config, Arc::new(LogHandler), true)?;
    run_node(config, "agent", metrics_at, bearer)
}

/// Runs `sealcast device run`.
pub fn device_run(args: &RunArgs) -> Result<()> {
    init_logs();
    let handler: Arc<dyn CommandHandler> = match &args.exec_log {
        Some(path) => Arc::new(ExecLog { path: path.clone() }),
        None => Arc::new(LogHandler),
    };
    let (config, metrics_at, bearer) = node_config(&args.config, handler, false)?;
    run_node(config, "device", metrics_at, bearer)
}

/// Runs `sealcast device send`.
pub fn device_send(args: &SendArgs) -> Result<()> {
    init_logs();
    let (config, _, _) = node_config(&args.config, Arc::new(LogHandler), false)?;
    let group = group_id(&args.group)?;
    let (bytes, seq) = runtime()?
        .block_on(device::send_once(
            config,
            &group,
            GroupChannel::Alert,
            args.alert.as_bytes(),
            std::time::Duration::from_secs(args.wait),
        ))
        .map_err(|e| failed("the alert was not sent", e))?;
    say(&format!(
        "sent alert to {} seq={seq} ({} bytes)",
        args.group,
        bytes.len()
    ));
    Ok(())
}

/// Arguments of `sealcast device token` and `sealcast agent token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The node's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `sealcast device token` / `sealcast agent token`.
pub fn show_token(args: &TokenArgs) -> Result<()> {
    let (config, base): (NodeFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    let manager = load_public_key(&resolve(&base, &config.manager_public_key))?;
    let me = load_private_key(&resolve(&base, &config.key))?.id().clone();
    let file = DeviceStateFile::new(state_dir.join("state.cbor"));
    let held = sealcast_node::token_store::read_held(&file, &manager, &me)
        .map_err(|e| failed("cannot read the access token", e))?;
    let now_s = sealcast_node::runtime::now().get() / 1000;
    match held {
        None if args.json => {
            say(&serde_json::json!({"entity": me.as_str(), "token": null}).to_string())
        }
        None => say(&format!(
            "{me} holds no access token (the manager issues one for each [[access_token]] of its config)"
        )),
        Some(t) => {
            let valid = t.valid_at(now_s).is_ok();
            if args.json {
                let grants: Vec<serde_json::Value> = t
                    .scope
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "group": g.group.as_ref().map_or_else(|| "*".to_owned(), |g| g.name().to_string()),
                            "operations": g.operations,
                        })
                    })
                    .collect();
                say(&serde_json::json!({
                    "entity": me.as_str(),
                    "token": {
                        "id": sealcast_node::control::hex(&t.id),
                        "issuer": t.issuer.as_str(),
                        "issued_at": t.issued_at,
                        "not_before": t.not_before,
                        "expires": t.expires,
                        "valid": valid,
                        "grants": grants,
                    }
                })
                .to_string());
            } else {
                say(&format!(
                    "{me}: access token {} from {}: {}; {}",
                    sealcast_node::control::hex(&t.id),
                    t.issuer,
                    t.describe(),
                    if valid {
                        format!("valid for {} s more", t.expires.saturating_sub(now_s))
                    } else {
                        format!("EXPIRED {} s ago", now_s.saturating_sub(t.expires))
                    }
                ));
            }
        }
    }
    Ok(())
}
