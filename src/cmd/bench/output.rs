//! The results as a table for people and as JSON for scripts.

use super::*;

pub(super) fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Results {
    pub(super) fn headline(&self) -> &OpenFigure {
        self.open
            .iter()
            .find(|o| o.payload == PAYLOAD)
            .unwrap_or(&self.open[0])
    }

    pub(super) fn batch(&self, size: usize) -> Option<&BatchFigure> {
        self.batches.iter().find(|b| b.size == size)
    }

    pub(super) fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "sealcast bench — backend {}, strict verification on, {} build, {} clock{}",
            ed25519_backend(),
            profile(),
            clock_name(),
            if self.quick {
                ", --quick (indicative only)"
            } else {
                ""
            }
        );
        if cfg!(debug_assertions) {
            let _ = writeln!(t, "warning: debug build; measure with --release");
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<40} {:>14} {:>14} {:>8}  target",
            "measurement", "rate/s", "baseline/s", "ratio"
        );
        let row = |t: &mut String, name: &str, a: f64, b: f64, target: &str| {
            let _ = writeln!(
                t,
                "{name:<40} {a:>14.0} {b:>14.0} {:>8.3}  {target}",
                ratio(a, b)
            );
        };
        for o in &self.open {
            row(
                &mut t,
                &format!("open {} B / raw verify_strict", o.payload),
                o.open_per_sec,
                o.verify_strict_per_sec,
                ">= 0.95",
            );
        }
        let shares: Vec<String> = self
            .open
            .iter()
            .map(|o| format!("{:.1} % at {} B", o.aead_share * 100.0, o.payload))
            .collect();
        let _ = writeln!(
            t,
            "  (AES-GCM of the inner object alone, in verifies: {})",
            shares.join(", ")
        );
        row(
            &mut t,
            "seal 100 B / raw sign",
            self.seal_per_sec,
            self.sign_per_sec,
            "",
        );
        for b in &self.batches {
            row(
                &mut t,
                &format!("report batch {} / one by one", b.size),
                b.batch_per_sec,
                b.single_per_sec,
                if b.size == 64 { ">= 1.8" } else { "" },
            );
        }
        row(
            &mut t,
            "report batch 64, 1 forged / one by one",
            self.forged64.batch_per_sec,
            self.forged64.single_per_sec,
            "",
        );
        row(
            &mut t,
            "report batch 64, 6 forged / one by one",
            self.forged64_six.batch_per_sec,
            self.forged64_six.single_per_sec,
            "",
        );
        row(
            &mut t,
            "  planned for 6 in 64 (as a DAP does)",
            self.forged64_six_planned.batch_per_sec,
            self.forged64_six_planned.single_per_sec,
            "",
        );
        row(
            &mut t,
            "burst open 64 / one by one",
            self.burst64_open_per_sec,
            self.burst64_single_open_per_sec,
            ">= 1.8",
        );
        row(
            &mut t,
            "open on 2 threads / 1 thread",
            self.threads.two_cpu,
            self.threads.one_cpu,
            ">= 1.85",
        );
        row(
            &mut t,
            "  the same in wall time (machine load!)",
            self.threads.two_wall,
            self.threads.one_wall,
            "",
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<10} {:>14} {:>12} {:>16} {:>14} {:>12}",
            "rekey n", "tree CPU", "tree bytes", "p2p CPU", "p2p bytes", "CPU ratio"
        );
        for r in &self.rekey {
            let _ = writeln!(
                t,
                "{:<10} {:>12.1}µs {:>12} {:>14.3}s{} {:>14} {:>11.0}x",
                thousands(r.members),
                r.tree_cpu_s * 1e6,
                r.tree_bytes,
                r.p2p_cpu_s,
                if r.p2p_extrapolated { "*" } else { " " },
                r.p2p_bytes,
                ratio(r.p2p_cpu_s, r.tree_cpu_s),
            );
        }
        let _ = writeln!(
            t,
            "* point-to-point measured at n = {} ({} deliveries) and extrapolated linearly (n − 1 deliveries); target: tree >= 1000x cheaper at 100 000",
            self.p2p_measured_members,
            self.p2p_measured_members - 1
        );
        if let Some(e) = &self.e2e {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "end to end, fire-safety over the embedded MQTT broker: {} devices, {} opens, fastest of {} runs",
                e.devices, e.opens, e.runs
            );
            let _ = writeln!(
                t,
                "  alert → last device acting {:.1} ms (the gateway verified it after {:.1} ms, the first device acted after {:.1} ms); one open {:.1} µs on one core; {} cores",
                e.alert_to_last.as_secs_f64() * 1e3,
                e.alert_to_gateway.as_secs_f64() * 1e3,
                e.alert_to_first.as_secs_f64() * 1e3,
                e.single_open_s * 1e6,
                e.cores
            );
            let _ = writeln!(
                t,
                "  security overhead factor (alert→last − transport floor) ÷ (opens × one open ÷ cores) {:>7.2}  goal <= 1.5",
                e.security_overhead_factor()
            );
            let _ = writeln!(
                t,
                "  (secondary) pipeline efficiency (opens × one open) ÷ (wall × cores) {:>8.3}",
                e.efficiency()
            );
            let _ = writeln!(
                t,
                "  the same fan-out with no security (MQTT alone, {} subscribers, 2 messages): {:.1} ms = {:.0} % of the pipeline's wall time",
                e.devices,
                e.transport_floor.as_secs_f64() * 1e3,
                100.0
                    * ratio(
                        e.transport_floor.as_secs_f64(),
                        e.alert_to_last.as_secs_f64()
                    )
            );
        }
        if let Some(l) = &self.load {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "loaded gateway: {} alerts from {} sensors over the embedded MQTT broker, the gateway alone on a thread with its state file, its CPU time; best of {} runs each",
                l.alerts, l.sensors, l.runs
            );
            let _ = writeln!(
                t,
                "  one by one      {:>10.0} opens / CPU-s   ratio to one open {:>6.2}  ({:.0} alerts/s wall)",
                l.one_by_one.opens_per_cpu_second(),
                l.one_by_one_ratio(),
                ratio(l.one_by_one.opened as f64, l.one_by_one.wall.as_secs_f64())
            );
            let _ = writeln!(
                t,
                "  queued bursts   {:>10.0} opens / CPU-s   ratio to one open {:>6.2}  goal >= 2.5  ({:.0} alerts/s wall; {} bursts, {:.1} alerts each on average, {:.0} % of the alerts)",
                l.bursts.opens_per_cpu_second(),
                l.ratio(),
                ratio(l.bursts.opened as f64, l.bursts.wall.as_secs_f64()),
                l.bursts.bursts,
                l.mean_burst(),
                100.0 * ratio(l.bursts.in_bursts as f64, l.bursts.opened as f64)
            );
        }
        if let Some(d) = &self.dap {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "DAP service: {} reports in through the embedded MQTT broker, signed batches of 64 out, state file written before each ack; the DAP alone on a thread, its CPU time; best of {} runs each",
                d.reports, d.runs
            );
            let _ = writeln!(
                t,
                "  pure batch verification (batch of 64, this run) {:>10.0} reports / CPU-s",
                d.batch_verify_per_sec
            );
            for (c, r) in &d.cases {
                let goal = if c.forged_per_mille == 0 { 0.8 } else { 0.6 };
                let _ = writeln!(
                    t,
                    "  {:>6} meters, {:>4.1} % forged {:>10.0} reports / CPU-s   service ratio {:>6.2}  goal >= {goal}  ({} forwarded in {} batches, {} forgeries dropped; {:.2} s wall)",
                    thousands(c.meters),
                    c.forged_per_mille as f64 / 10.0,
                    r.reports_per_cpu_second(),
                    ratio(r.reports_per_cpu_second(), d.batch_verify_per_sec),
                    r.forwarded,
                    r.batches,
                    r.dropped_forged,
                    r.wall.as_secs_f64()
                );
            }
        }
        if self.failures > 0 {
            let _ = writeln!(
                t,
                "warning: {} operations failed during the run (a bug)",
                self.failures
            );
        }
        t
    }

    pub(super) fn json(&self) -> String {
        let head = self.headline();
        let batch64 = self.batch(64);
        let mut fields: Vec<(String, Value)> = vec![
            ("backend".into(), Value::from(ed25519_backend().name())),
            ("strict".into(), Value::Bool(true)),
            ("profile".into(), Value::from(profile())),
            ("clock".into(), Value::from(clock_name())),
            ("quick".into(), Value::from(self.quick)),
            ("payload_bytes".into(), Value::from(PAYLOAD)),
            ("open_per_sec".into(), num(head.open_per_sec)),
            (
                "verify_strict_per_sec".into(),
                num(head.verify_strict_per_sec),
            ),
            (
                "open_to_verify_ratio".into(),
                num(ratio(head.open_per_sec, head.verify_strict_per_sec)),
            ),
        ];
        for o in &self.open {
            fields.push((format!("open_{}b_per_sec", o.payload), num(o.open_per_sec)));
            fields.push((
                format!("verify_strict_{}b_per_sec", o.payload),
                num(o.verify_strict_per_sec),
            ));
            fields.push((
                format!("open_to_verify_ratio_{}b", o.payload),
                num(ratio(o.open_per_sec, o.verify_strict_per_sec)),
            ));
            fields.push((
                format!("aead_share_of_verify_{}b", o.payload),
                num(o.aead_share),
            ));
        }
        fields.extend([
            ("seal_per_sec".into(), num(self.seal_per_sec)),
            ("sign_per_sec".into(), num(self.sign_per_sec)),
            (
                "seal_to_sign_ratio".into(),
                num(ratio(self.seal_per_sec, self.sign_per_sec)),
            ),
            (
                "batch64_per_sec".into(),
                num(batch64.map_or(0.0, |b| b.batch_per_sec)),
            ),
            (
                "single_verify_per_sec".into(),
                num(batch64.map_or(0.0, |b| b.single_per_sec)),
            ),
            (
                "batch64_ratio".into(),
                num(batch64.map_or(0.0, |b| ratio(b.batch_per_sec, b.single_per_sec))),
            ),
        ]);
        for b in self.batches.iter().filter(|b| b.size != 64) {
            fields.push((format!("batch{}_per_sec", b.size), num(b.batch_per_sec)));
            fields.push((
                format!("batch{}_ratio", b.size),
                num(ratio(b.batch_per_sec, b.single_per_sec)),
            ));
        }
        fields.extend([
            (
                "batch64_one_forged_per_sec".into(),
                num(self.forged64.batch_per_sec),
            ),
            (
                "batch64_one_forged_ratio".into(),
                num(ratio(
                    self.forged64.batch_per_sec,
                    self.forged64.single_per_sec,
                )),
            ),
            (
                "batch64_six_forged_ratio".into(),
                num(ratio(
                    self.forged64_six.batch_per_sec,
                    self.forged64_six.single_per_sec,
                )),
            ),
            (
                "batch64_six_forged_planned_ratio".into(),
                num(ratio(
                    self.forged64_six_planned.batch_per_sec,
                    self.forged64_six_planned.single_per_sec,
                )),
            ),
            (
                "burst64_open_per_sec".into(),
                num(self.burst64_open_per_sec),
            ),
            (
                "burst64_single_open_per_sec".into(),
                num(self.burst64_single_open_per_sec),
            ),
            (
                "burst64_ratio".into(),
                num(ratio(
                    self.burst64_open_per_sec,
                    self.burst64_single_open_per_sec,
                )),
            ),
            ("one_thread_open_per_sec".into(), num(self.threads.one_cpu)),
            ("two_thread_open_per_sec".into(), num(self.threads.two_cpu)),
            (
                "two_thread_ratio".into(),
                num(ratio(self.threads.two_cpu, self.threads.one_cpu)),
            ),
            (
                "one_thread_wall_open_per_sec".into(),
                num(self.threads.one_wall),
            ),
            (
                "two_thread_wall_open_per_sec".into(),
                num(self.threads.two_wall),
            ),
            (
                "two_thread_wall_ratio".into(),
                num(ratio(self.threads.two_wall, self.threads.one_wall)),
            ),
        ]);
        for r in &self.rekey {
            let n = match r.members {
                1_000 => "1k",
                10_000 => "10k",
                _ => "100k",
            };
            fields.extend([
                (format!("rekey_tree_cpu_s_{n}"), num(r.tree_cpu_s)),
                (format!("rekey_tree_bytes_{n}"), Value::from(r.tree_bytes)),
                (format!("rekey_p2p_cpu_s_{n}"), num(r.p2p_cpu_s)),
                (format!("rekey_p2p_bytes_{n}"), Value::from(r.p2p_bytes)),
                (
                    format!("rekey_tree_vs_p2p_cpu_ratio_{n}"),
                    num(ratio(r.p2p_cpu_s, r.tree_cpu_s)),
                ),
            ]);
        }
        fields.extend([
            (
                "rekey_p2p_measured_members".into(),
                Value::from(self.p2p_measured_members),
            ),
            (
                "rekey_p2p_extrapolated".into(),
                Value::from("linear in n - 1 deliveries beyond the measured members"),
            ),
            ("failures".into(), Value::from(self.failures)),
        ]);
        if let Some(e) = &self.e2e {
            fields.extend([
                ("e2e_devices".into(), Value::from(e.devices)),
                ("e2e_opens".into(), Value::from(e.opens)),
                ("e2e_runs".into(), Value::from(e.runs)),
                (
                    "e2e_alert_to_last_ms".into(),
                    num(e.alert_to_last.as_secs_f64() * 1e3),
                ),
                (
                    "e2e_alert_to_gateway_ms".into(),
                    num(e.alert_to_gateway.as_secs_f64() * 1e3),
                ),
                (
                    "e2e_alert_to_first_ms".into(),
                    num(e.alert_to_first.as_secs_f64() * 1e3),
                ),
                ("e2e_single_open_us".into(), num(e.single_open_s * 1e6)),
                ("e2e_cores".into(), Value::from(e.cores)),
                (
                    "e2e_security_overhead_factor".into(),
                    num(e.security_overhead_factor()),
                ),
                ("e2e_pipeline_efficiency".into(), num(e.efficiency())),
                (
                    "e2e_transport_floor_ms".into(),
                    num(e.transport_floor.as_secs_f64() * 1e3),
                ),
            ]);
        }
        if let Some(l) = &self.load {
            fields.extend([
                ("loaded_gateway_alerts".into(), Value::from(l.alerts)),
                ("loaded_gateway_sensors".into(), Value::from(l.sensors)),
                (
                    "loaded_gateway_opens_per_cpu_sec".into(),
                    num(l.bursts.opens_per_cpu_second()),
                ),
                ("loaded_gateway_ratio".into(), num(l.ratio())),
                (
                    "loaded_gateway_one_by_one_opens_per_cpu_sec".into(),
                    num(l.one_by_one.opens_per_cpu_second()),
                ),
                (
                    "loaded_gateway_one_by_one_ratio".into(),
                    num(l.one_by_one_ratio()),
                ),
                ("loaded_gateway_mean_burst".into(), num(l.mean_burst())),
                (
                    "loaded_gateway_bursts_vs_one_by_one".into(),
                    num(ratio(
                        l.bursts.opens_per_cpu_second(),
                        l.one_by_one.opens_per_cpu_second(),
                    )),
                ),
                (
                    "loaded_gateway_alerts_per_sec_wall".into(),
                    num(ratio(l.bursts.opened as f64, l.bursts.wall.as_secs_f64())),
                ),
                (
                    "loaded_gateway_one_by_one_alerts_per_sec_wall".into(),
                    num(ratio(
                        l.one_by_one.opened as f64,
                        l.one_by_one.wall.as_secs_f64(),
                    )),
                ),
            ]);
        }
        if let Some(d) = &self.dap {
            fields.push(("dap_reports".into(), Value::from(d.reports)));
            fields.push((
                "dap_batch_verify_per_sec".into(),
                num(d.batch_verify_per_sec),
            ));
            for (c, r) in &d.cases {
                let name = match c.forged_per_mille {
                    0 => format!("dap_service_{}", c.meters),
                    n => format!("dap_forged_{}pm_{}", n, c.meters),
                };
                fields.push((
                    format!("{name}_reports_per_cpu_sec"),
                    num(r.reports_per_cpu_second()),
                ));
                fields.push((
                    format!("{name}_ratio"),
                    num(ratio(r.reports_per_cpu_second(), d.batch_verify_per_sec)),
                ));
            }
            let worst = |forged: bool| {
                d.cases
                    .iter()
                    .filter(|(c, _)| (c.forged_per_mille > 0) == forged)
                    .filter_map(|(c, _)| d.ratio(c.meters, c.forged_per_mille))
                    .fold(f64::INFINITY, f64::min)
            };
            fields.push(("dap_service_ratio".into(), num(worst(false))));
            fields.push(("dap_forged_ratio".into(), num(worst(true))));
        }
        let object: serde_json::Map<String, Value> = fields.into_iter().collect();
        let mut text = serde_json::to_string_pretty(&Value::Object(object))
            .unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        text
    }
}

/// `100000` as `100 000`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A JSON number (finite; a non-finite value, which no measurement should
/// produce, becomes 0 so the object stays valid).
pub(super) fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::from(0), Value::Number)
}
