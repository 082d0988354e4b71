//! `sealcast <service> config-template`: a commented TOML file with every
//! setting the service reads, its default and what it is for. Each template
//! parses as the service's config (a unit test in `serve` checks it), so it
//! can be copied and edited.

/// `manager.toml`.
pub const MANAGER: &str = r#"# sealcast manager serve --config manager.toml
# Relative paths are relative to this file's directory.

broker = "mqtt://127.0.0.1:1883"     # MQTT broker (transport = "mqtt", the default)
# transport = "coap"                 # or CoAP: then leave out `broker` and add [coap] below
# transport = "onem2m"               # or oneM2M CSEs: then leave out `broker` and add [onem2m] below
# topic_prefix = "site-a"            # topics under site-a/sealcast/v1/…; must match every node's
key = "manager.key"                  # this manager's private key (sealcast keygen --id manager)
state_dir = "manager-state"          # store, audit log, control socket and instance lock (0700)
kek = "manager.kek"                  # key-encryption key of the store; created (0600) if missing
# sqlite = "manager-state/manager.db"          # default: <state_dir>/manager.db
# postgres = "postgres://sealcast@db.example/sealcast"   # instead of SQLite
# postgres_schema = "site_a"         # PostgreSQL schema of the tables (created if missing)
# audit_log = "manager-state/audit.jsonl"      # default: <state_dir>/audit.jsonl
# control_socket = "manager-state/manager.sock" # default: <state_dir>/manager.sock
# control_socket_mode = "600"        # 600 (owner only) | 660 (and its group) | 666 (every local user): needs [[admin_acp]]
# control_socket_group = "operators" # the socket's group (a name or a number)
# metrics_listen = "127.0.0.1:9464"  # Prometheus text at /metrics, readiness at /health
# mqtt_client_id = "site-a:manager-2" # default <topic_prefix>:<id>; set it for a second manager of one PostgreSQL store
# tls_ca = "ca.pem"                  # with broker = "mqtts://…": the CA the broker's certificate chains to
# tls_cert = "manager.crt"           # client certificate (and tls_key), for brokers that require one
# tls_key = "manager.key.pem"
# username = "manager"               # MQTT username
# password_file = "manager.pass"     # its first line is the password (else SEALCAST_BROKER_PASSWORD)
# resend_max_interval_s = 600        # re-sends to a silent member back off 5 s, 10 s, 20 s … up to this
# resend_max_per_round = 1000        # most re-sends per round (every 5 s); the rest wait for the next

# [onem2m]                           # with transport = "onem2m" (docs/ARCHITECTURE.md, "oneM2M")
# infrastructure = "http://127.0.0.1:8080/cse-in"  # the IN-CSE's <CSEBase>: the manager's registrar
#                                    # (MQTT binding: "mqtt://127.0.0.1:1883/id-in/cse-in")
# field = "http://127.0.0.1:8081/cse-mn"           # the MN-CSE's: everyone else's, and the groups' host
# serialization = "json"             # or "cbor"
# addressing = "sp-relative"         # or "absolute" (//<sp-id>/<cse-id>/…)
# listen = "127.0.0.1:0"             # the notification listener (the AE's point of access)

# [coap]                             # with transport = "coap"
# listen = "127.0.0.1:5701"          # this entity's unicast endpoint
# group = "224.0.1.187:5683"         # multicast group of the group channels
# multicast_interface = "127.0.0.1"  # the interface multicast is pinned to
# [[coap.endpoint]]                  # one per agent the manager sends deliveries to
# id = "gateway"
# address = "127.0.0.1:5702"

# Seeds the store on the first start. Afterwards the store is the authority:
# new enrolments and new groups are added, but members of a group the store
# holds are never re-applied (an eviction stays an eviction).
[[enrol]]
id = "gateway"
kind = "agent"                       # device | agent | headend
public_key = "gateway.pub"

[[enrol]]
id = "door-1"
kind = "device"
public_key = "door-1.pub"
agent = "gateway"                    # the agent that relays its key deliveries

[[group]]
id = "fire-doors"
scheme = "tree"                      # tree (logarithmic rekey) | p2p (one delivery per member)
members = [{ id = "gateway", role = "sender" }, { id = "door-1", role = "receiver" }]

# What the manager does on its agents' misbehaviour reports (none: each report
# is audited, nothing more). Operators act by hand with `sealcast node suspend|revoke`.
# [[misbehaviour]]
# evidence = "flood"                 # flood | policy | listed-signer (the entity's own signed messages);
#                                    # forgery | replay name a claimed sender anyone in the group can forge: suspend only
# threshold = 20                     # events about one entity …
# window_s = 60                      # … within this many seconds
# action = "revoke"                  # suspend (messages refused everywhere) | revoke (also evicted, groups rekeyed)

# Who may administer this manager on its control socket (none: its owner,
# for everything). Rules as a node's [[acp]]; originators are OS users (name
# or "uid:N"); operations: enrol create add evict rekey show list deactivate
# activate node remove suspend revoke reinstate statuses rotate-key, or "*".
# [[admin_acp]]
# originators = ["root"]
# operations = ["*"]

# Access-control tokens (none by default): the manager signs each entity's
# rights, sends them end to end and renews them at half their lifetime; the
# entity carries its token in what it signs; nodes with
# accept_access_tokens = true validate it offline.
# [[access_token]]
# entity = "gateway"                 # an enrolled device or gateway
# groups = ["fire-doors"]            # "*": every group
# operations = ["unlock"]            # a command's first word, "alert", or "*"
# lifetime_s = 3600                  # at least 2
"#;

/// `agent.toml` (a gateway) or `device.toml`: the same keys; a device has
/// no `relays_for` and no `[[rule]]`.
pub const NODE: &str = r#"# sealcast agent serve --config agent.toml   /   sealcast device run --config door-1.toml
# Relative paths are relative to this file's directory.

broker = "mqtt://127.0.0.1:1883"     # MQTT broker (transport = "mqtt", the default)
# transport = "coap"                 # or CoAP: then leave out `broker` and add [coap] below
# transport = "onem2m"               # or oneM2M CSEs: then leave out `broker` and add [onem2m] below
# topic_prefix = "site-a"            # must equal the manager's
key = "gateway.key"                  # this entity's private key
manager_public_key = "manager.pub"   # the manager it trusts (key deliveries are signed by it)
state_dir = "gateway-state"          # keys, replay windows, sequence reservations (state.cbor, 0600)
# no_key_material_warning_s = 60     # warn once when no key arrived this long after start (0: never)
# command_max_age_s = 300            # refuse commands/alerts stamped further than this from our clock (0: no bound)
# accept_access_tokens = false       # a signer's token from the manager may permit what [[acp]] does not
#                                    # (true and no [[acp]]: only what a valid token grants runs)
# metrics_listen = "127.0.0.1:9465"  # Prometheus text at /metrics, readiness at /health
# audit_log = "gateway-state/audit.jsonl"  # hash-chained log of what it received and sent (metadata only)
# audit_max_kib = 16384              # rotate at this size; `sealcast audit verify` checks all segments as one chain
# audit_keep = 8                     # rotated segments kept (audit.jsonl.1 … .8)
# tls_ca = "ca.pem"                  # with broker = "mqtts://…"; also tls_cert, tls_key
# username = "gateway"               # MQTT username; password_file = "gateway.pass"

relays_for = ["door-1"]              # agents: the devices whose key deliveries it relays

[[rule]]                             # agents: an alert verified from one group → a command to another
on_alert_from = "fire-sensors"
then_command = "fire-doors"
payload = "unlock"

# [[acp]]                            # who may order what: permit-overrides, deny by default once any rule is set
# effect = "permit"                  # permit | deny
# originators = ["gateway"]          # "*" everyone, "console-*" a prefix
# operations = ["unlock"]            # a command's first word, "alert", or "*"
# groups = ["fire-doors"]            # optional
# hours = "06-22"                    # optional, UTC, end exclusive

# [misbehaviour]                     # docs/ARCHITECTURE.md, "Misbehaviour reports and authorization status"
# max_messages_per_sender_per_minute = 120  # more verified messages of one signer are refused and reported as flood (0: no cap)
# report_interval_ms = 2000          # agents send what they saw to the manager at most this often
# report = true                      # agents report by default; devices never do

# [[group_policy]]                   # freshness rule of one group (docs/ARCHITECTURE.md, "Replay and freshness")
# group = "fire-doors"
# replay = "sequence"                # sequence | timestamp
# max_age_s = 30                     # sequence: the age bound; timestamp: the skew

# [onem2m]                           # with transport = "onem2m" (docs/ARCHITECTURE.md, "oneM2M")
# infrastructure = "http://127.0.0.1:8080/cse-in"  # the IN-CSE's <CSEBase>: the manager's registrar
# field = "http://127.0.0.1:8081/cse-mn"           # the MN-CSE's: everyone else's, and the groups' host
# serialization = "json"             # or "cbor"
# addressing = "sp-relative"         # or "absolute" (//<sp-id>/<cse-id>/…)
# listen = "127.0.0.1:0"             # the notification listener (the AE's point of access)

# [coap]                             # with transport = "coap"
# listen = "127.0.0.1:5702"
# group = "224.0.1.187:5683"
# multicast_interface = "127.0.0.1"
# [[coap.endpoint]]                  # the manager, and (agents) each relayed device
# id = "manager"
# address = "127.0.0.1:5701"
"#;

/// `agent.toml` of a Data Aggregation Point (smart metering).
pub const DAP: &str = r#"# sealcast agent serve --config dap.toml   (a Data Aggregation Point)
broker = "mqtt://127.0.0.1:1883"
# topic_prefix = "site-a"
key = "dap-1.key"
state_dir = "dap-1-state"            # per-meter windows, batch sequence (dap.cbor + its journal, 0600)
# manager_public_key = "manager.pub" # with it, the gateway node runs beside the DAP

[dap]
group = "street-7"                   # the meter group's name (default "meters")
headend = "headend"                  # the headend's id
headend_public_key = "headend.pub"
meters_dir = "meters"                # every *.pub in it is a meter it serves
# [[dap.meter]]                      # or list meters one by one
# id = "meter-1"
# public_key = "meter-1.pub"
batch_size = 64                      # 1-4096
max_batch_delay_ms = 200             # 1-60000
# max_reports_per_meter_per_minute = 60  # cap per meter: genuine reports beyond it are dropped
# max_report_burst = 60              #   and counted (default burst: the per-minute number)
# max_report_drift_s = 300           # drop reports stamped further than this from our clock
# max_seq_gap = 1000                 # flag (still forward) a meter skipping more numbers than this
# pool = "street-7-daps"             # share a report pool with other DAPs (MQTT shared
#                                    # subscription); meters then set dap = "street-7-daps"
# audit_log = "dap-1-state/dap-audit.jsonl"  # the DAP's hash-chained log (metadata, never readings)
# audit_max_kib = 16384              # rotate at this size
# audit_keep = 8                     # rotated segments kept
# report_interval_ms = 2000          # misbehaviour reports to the headend (over-rate meters, forgeries
#                                    # and replays naming a meter) at most this often; 0: none
"#;

/// `headend.toml`.
pub const HEADEND: &str = r#"# sealcast headend serve --config headend.toml --readings readings.log
broker = "mqtt://127.0.0.1:1883"
# topic_prefix = "site-a"
key = "headend.key"
state_dir = "headend-state"          # announcements and replay windows (headend.cbor, 0600)
meters_dir = "meters"                # every *.pub here is a meter the headend can decrypt
# verify_meter_signatures = false    # also re-check each meter's signature
# audit_log = "headend-state/audit.jsonl"  # hash-chained log of batches received (metadata, never readings)
# audit_max_kib = 16384              # rotate at this size
# audit_keep = 8                     # rotated segments kept

# [[meter]]                          # or list meters one by one
# id = "meter-1"
# public_key = "meter-1.pub"

[[dap]]                              # at least one
id = "dap-1"
public_key = "dap-1.pub"

# [[plausibility]]                   # rules decrypted readings must meet (value: the first number in the text)
# meters = "meter-"                  # meters whose id starts with this (default: every meter)
# min = 0
# max = 1000000
# max_rise_per_hour = 50             # since the meter's last accepted reading
# monotonic = true                   # a counter never goes down
# hours = "00-24"                    # UTC hours readings are taken in ("22-06" wraps)
# action = "drop"                    # or "flag": handed on, marked flag=implausible:<why>

# [[misbehaviour]]                   # the headend issues its meters' status list: on its DAPs' reports
# evidence = "flood"                 # (flood, forgery, replay) and its own implausible readings
# threshold = 20                     # (implausible), a meter is suspended or revoked; every DAP then
# window_s = 3600                    # drops its reports, and the headend its readings
# action = "revoke"                  # suspend | revoke (forgery and replay: suspend only)

# [[meter_status]]                   # by hand: applied at start and on SIGHUP (kill -HUP <headend pid>)
# meter = "meter-7"
# status = "suspended"               # suspended | revoked | reinstated (lifts a listing, the policy's too)
# reason = "seal broken"

# [downlink]                         # re-configure every meter at once: sealcast headend configure-meters
# group = "meters"                   # the meter group (meters: meter_group); its key in headend-state/downlink.cbor (0600)
# retry_ms = 5000                    # unconfirmed meters served again after this, doubling per try (at most 10 min)
# sa_refresh_s = 2592000             # refresh each meter's security association once this old (default: by hand only)
"#;

/// `meter.toml` (`sealcast device report`).
pub const METER: &str = r#"# sealcast device report --config meter-1.toml --reading "1042 kWh"
broker = "mqtt://127.0.0.1:1883"
# topic_prefix = "site-a"
key = "meter-1.key"
state_dir = "meter-1-state"          # sequence reservation (meter.cbor, 0600)
dap = "dap-1"                        # the DAP it reports through
headend_public_key = "headend.pub"   # readings are encrypted for the headend
# meter_group = "meters"             # the headend's meter group (sealcast device listen; downlink.cbor, 0600)
# audit_log = "meter-1-state/audit.jsonl"  # hash-chained log of the reports sent (never a reading)
#                                    # (device listen keeps its own: meter-1-state/downlink-audit.jsonl)
"#;
