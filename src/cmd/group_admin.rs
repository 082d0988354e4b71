//! `sealcast group enrol | add | evict | rekey | show | list` and
//! `group create --config`: administration of a running manager through its
//! control socket (`sealcast_node::control`: one JSON request per line, one
//! JSON response per line). Requests and answers are the protocol's own
//! types (`sealcast_group::admin`, re-exported as `sealcast_node::control::protocol`), the ones the server uses.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sealcast_core::credential::MAX_CREDENTIAL_FILE_LEN;
use sealcast_node::control::{
    Added, EnrolEntity, Enrolled, Evicted, GroupShow, Groups, KindName, MAX_LINE, MemberSpec,
    Rekeyed, Request, RoleName, hex,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::group::{AlgArg, SchemeArg};
use super::{load_public_key, note, say};
use crate::error::{CliError, Result};
use crate::files;

/// Entities per enrol request (about 170 KB of JSON).
const ENROL_BATCH: usize = 500;
/// Members per add request; each request is one join event (one epoch).
const ADD_BATCH: usize = 10_000;
/// How long one response may take (a big point-to-point rekey seals one
/// delivery per member).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the manager listens: its config, or the socket itself.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("manager").required(true).args(["config", "socket"])))]
pub struct ManagerArgs {
    /// The running manager's config (manager.toml); its control socket is
    /// `control_socket`, or manager.sock in its state_dir.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The manager's control socket, instead of --config.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// Entity kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A field device (ASN).
    Device,
    /// A gateway / MN agent / DAP (relays to its devices).
    Agent,
    /// A utility headend.
    Headend,
}

impl KindArg {
    fn wire(self) -> KindName {
        match self {
            KindArg::Device => KindName::Device,
            KindArg::Agent => KindName::Agent,
            KindArg::Headend => KindName::Headend,
        }
    }
}

/// Enrol entities (their public keys) with a running manager.
///
/// Sends the public COSE_KeySets ('sealcast keygen' writes <ID>.pub) to the
/// manager, which stores them (one transaction per batch of 500) and audits
/// them. All or none per batch; an entity enrolled already with the same key
/// is reported as unchanged, with another key refused.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sealcast group enrol --config manager.toml --public-key gw-1.pub --kind agent
  sealcast group enrol --config manager.toml --public-key door-1.pub --kind device --agent gw-1
  sealcast group enrol --config manager.toml --public-key-dir doors/ --kind device --agent gw-1")]
#[command(group(ArgGroup::new("keys").required(true).args(["public_keys", "public_key_dir"])))]
pub struct EnrolArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// A public key file (<ID>.pub); repeat for several.
    #[arg(long = "public-key", value_name = "FILE")]
    public_keys: Vec<PathBuf>,
    /// Enrol every *.pub file in this directory.
    #[arg(long, value_name = "DIR")]
    public_key_dir: Option<PathBuf>,
    /// What the entities are.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// The agent (gateway) that relays to them; it must be enrolled (as an
    /// agent) first.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

/// Add enrolled entities to a group of a running manager.
///
/// All members of one command join in one event: the group moves one epoch
/// forward, current members ratchet their key on a signed notice, and each
/// newcomer receives the new epoch's key end to end. (--members-file is
/// sent in events of 10 000 members.)
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sealcast group add --config manager.toml --group fire-doors --member door-1:receiver --member gw-1:sender
  sealcast group add --config manager.toml --group meters --members-file meters.txt   # lines: ID ROLE")]
#[command(group(ArgGroup::new("who").required(true).multiple(true).args(["members", "members_file"])))]
pub struct AddArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The group (its id as text).
    #[arg(long, value_name = "TEXT")]
    group: String,
    /// A member as ID:ROLE, ROLE is sender (may sign for the group) or
    /// receiver; repeat for several.
    #[arg(long = "member", value_name = "ID:ROLE", value_parser = parse_member)]
    members: Vec<(String, String)>,
    /// A file with one member per line: `ID ROLE` (blank lines and lines
    /// starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    members_file: Option<PathBuf>,
}

/// Evict a member from a group of a running manager: the group moves to a
/// fresh key the evicted member cannot compute.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast group evict --config manager.toml --group fire-doors --member door-1")]
pub struct EvictArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The group (its id as text).
    #[arg(long, value_name = "TEXT")]
    group: String,
    /// The member's entity id.
    #[arg(long, value_name = "ID")]
    member: String,
}

/// Give a group of a running manager a fresh key without changing its
/// members (tree groups: one broadcast; p2p groups: one delivery per
/// member). Nobody holding only earlier keys can compute the new one.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast group rekey --config manager.toml --group fire-doors")]
pub struct RekeyArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The group (its id as text).
    #[arg(long, value_name = "TEXT")]
    group: String,
}

/// Show a group of a running manager: epoch, scheme, and each member with
/// its role and whether it acknowledged (holds) the current epoch.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sealcast group show --config manager.toml --group fire-doors
  sealcast group show --config manager.toml --group fire-doors --json")]
pub struct ShowArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The group (its id as text).
    #[arg(long, value_name = "TEXT")]
    group: String,
    /// Print the manager's answer as JSON (with every member).
    #[arg(long)]
    json: bool,
    /// List every member (fetched in pages of 2 000); without it, counts
    /// by acknowledged epoch only.
    #[arg(long)]
    members: bool,
}

/// List the groups of a running manager.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast group list --config manager.toml")]
pub struct ListArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// Print the manager's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_member(s: &str) -> core::result::Result<(String, String), String> {
    let (id, role) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: write ID:ROLE, e.g. door-1:receiver"))?;
    Ok((id.to_owned(), role_name(role)?.to_owned()))
}

fn role_name(role: &str) -> core::result::Result<&'static str, String> {
    RoleName::parse(role)
        .map(RoleName::as_str)
        .ok_or_else(|| format!("role {role:?}: use sender or receiver"))
}

/// One connection to the manager's control socket.
pub(crate) struct Control {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    pub(crate) fn connect(manager: &ManagerArgs) -> Result<Self> {
        let path = match (&manager.socket, &manager.config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => super::serve::control_socket_path(c)?,
            (None, None) => {
                return Err(CliError::usage(
                    "pass --config manager.toml or --socket PATH",
                ));
            }
        };
        let start_hint = manager.config.as_ref().map_or_else(
            || "start it with `sealcast manager serve --config manager.toml`".to_owned(),
            |c| {
                format!(
                    "start it with `sealcast manager serve --config {}`",
                    c.display()
                )
            },
        );
        let stream = UnixStream::connect(&path).map_err(|e| {
            use std::io::ErrorKind;
            match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => CliError::other(format!(
                    "no manager answers on {}: {start_hint}",
                    path.display()
                )),
                ErrorKind::PermissionDenied => CliError::other(format!(
                    "not allowed to connect to {} (only the manager's user may): run this as that user",
                    path.display()
                )),
                _ => CliError::other(format!(
                    "cannot connect to the manager at {} ({e}): {start_hint}",
                    path.display()
                )),
            }
        })?;
        let io = |e: std::io::Error| CliError::io("use the control socket", &path, e);
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Self {
            path: path.clone(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and returns the manager's answer, or its refusal
    /// as an error.
    /// Sends `request` and reads its answer as `T`.
    pub(crate) fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| CliError::other(format!("cannot encode the request: {e}")))?;
        if line.len() > MAX_LINE {
            return Err(CliError::other(format!(
                "request of {} bytes exceeds the manager's {MAX_LINE}-byte limit",
                line.len()
            )));
        }
        line.push(b'\n');
        let gone = |e: std::io::Error| {
            CliError::other(format!(
                "the manager at {} stopped answering ({e}); check its log",
                self.path.display()
            ))
        };
        self.writer.write_all(&line).map_err(gone)?;
        let mut answer = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut answer)
            .map_err(gone)?;
        if answer.is_empty() {
            return Err(CliError::other(format!(
                "the manager at {} closed the connection without an answer; check its log",
                self.path.display()
            )));
        }
        let value: Value = serde_json::from_slice(&answer)
            .map_err(|e| CliError::other(format!("unreadable answer from the manager: {e}")))?;
        if value.get("ok") == Some(&Value::Bool(true)) {
            serde_json::from_value(value).map_err(|e| {
                CliError::other(format!(
                    "the manager's answer does not match this client ({e}): use the same sealcast version for both"
                ))
            })
        } else {
            let why = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the manager refused the request");
            Err(CliError::other(why.to_owned()))
        }
    }
}

fn progress(total: u64, what: &str) -> ProgressBar {
    // Draws on stderr only when it is a terminal.
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn pub_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::io("read directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::io("read directory", dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "pub") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(CliError::usage(format!(
            "no *.pub files in {}: 'sealcast keygen --out-dir {}' writes them",
            dir.display(),
            dir.display()
        )));
    }
    Ok(out)
}

/// `sealcast group enrol`.
pub fn enrol(args: &EnrolArgs) -> Result<()> {
    let mut paths = args.public_keys.clone();
    if let Some(dir) = &args.public_key_dir {
        paths.extend(pub_files_in(dir)?);
    }
    let mut control = Control::connect(&args.manager)?;
    let started = Instant::now();
    let bar = progress(paths.len() as u64, "enrolling");
    let (mut enrolled, mut unchanged) = (0u64, 0u64);
    for chunk in paths.chunks(ENROL_BATCH) {
        let mut entities = Vec::with_capacity(chunk.len());
        for path in chunk {
            // Parsed here too, so a wrong file is named by its path.
            load_public_key(path)?;
            let bytes = files::read_limited(Some(path), MAX_CREDENTIAL_FILE_LEN, "public key")?;
            entities.push(EnrolEntity {
                public_key: hex(&bytes),
                kind: args.kind.wire(),
                agent: args.agent.clone(),
            });
        }
        let answer: Enrolled = control
            .call(&Request::Enrol { entities })
            .inspect_err(|_| bar.abandon())?;
        enrolled += answer.enrolled;
        unchanged += answer.unchanged;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    say(&format!(
        "enrolled {enrolled} entities ({unchanged} were enrolled already) in {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `sealcast group create --config`.
pub fn create(config: &Path, group: &str, scheme: SchemeArg, alg: AlgArg) -> Result<()> {
    let manager = ManagerArgs {
        config: Some(config.to_path_buf()),
        socket: None,
    };
    let mut control = Control::connect(&manager)?;
    let created: sealcast_node::control::Created = control.call(&Request::Create {
        group: group.to_owned(),
        scheme: Some(scheme.wire()),
        alg: Some(alg.wire()),
    })?;
    say(&format!(
        "created group {group} ({}, {}) at epoch {}; add members with `sealcast group add`",
        created.scheme.as_str(),
        created.alg.as_str(),
        created.epoch
    ));
    Ok(())
}

fn members_from_file(path: &Path) -> Result<Vec<(String, String)>> {
    const LIMIT: usize = 64 << 20;
    let bytes = files::read_limited(Some(path), LIMIT, "members file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::usage(format!("{} is not UTF-8 text", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(role), None) = (words.next(), words.next(), words.next()) else {
            return Err(CliError::usage(format!(
                "{}:{}: write `ID ROLE` (role sender or receiver)",
                path.display(),
                n + 1
            )));
        };
        let role = role_name(role)
            .map_err(|e| CliError::usage(format!("{}:{}: {e}", path.display(), n + 1)))?;
        out.push((id.to_owned(), role.to_owned()));
    }
    Ok(out)
}

/// `sealcast group add`.
pub fn add(args: &AddArgs) -> Result<()> {
    let mut members = args.members.clone();
    if let Some(file) = &args.members_file {
        members.extend(members_from_file(file)?);
    }
    if members.is_empty() {
        return Err(CliError::usage("no members to add"));
    }
    let mut control = Control::connect(&args.manager)?;
    let bar = progress(members.len() as u64, "adding");
    let mut epoch = 0;
    for chunk in members.chunks(ADD_BATCH) {
        let members = chunk
            .iter()
            .map(|(id, role)| {
                let role = RoleName::parse(role).ok_or_else(|| {
                    CliError::usage(format!("role {role:?}: use sender or receiver"))
                })?;
                Ok(MemberSpec {
                    id: id.clone(),
                    role,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let answer: Added = control
            .call(&Request::Add {
                group: args.group.clone(),
                members,
            })
            .inspect_err(|_| bar.abandon())?;
        epoch = answer.epoch;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    say(&format!(
        "added {} member(s) to {}: now at epoch {epoch}",
        members.len(),
        args.group
    ));
    Ok(())
}

/// `sealcast group evict`.
pub fn evict(args: &EvictArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: Evicted = control.call(&Request::Evict {
        group: args.group.clone(),
        member: args.member.clone(),
    })?;
    say(&format!(
        "evicted {} from {}: now at epoch {} (a fresh key)",
        answer.evicted, answer.group, answer.epoch
    ));
    Ok(())
}

/// `sealcast group rekey`.
pub fn rekey(args: &RekeyArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: Rekeyed = control.call(&Request::Rekey {
        group: args.group.clone(),
    })?;
    say(&format!(
        "rekeyed {}: now at epoch {}",
        answer.group, answer.epoch
    ));
    Ok(())
}

/// An optional number, or `-`.
fn text<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out
    };
    let mut out = vec![line(header.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out
}

/// An answer as JSON for `--json` (the protocol's own field names).
fn json_line<T: serde::Serialize>(answer: &T) -> Result<String> {
    serde_json::to_string(answer)
        .map_err(|e| CliError::other(format!("cannot print the answer: {e}")))
}

/// `sealcast group show`.
pub fn show(args: &ShowArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    // The members come in pages (a group of 100 000 would not fit one
    // answer line); the summary and counts with the first.
    let page = sealcast_node::control::MAX_SHOW_PAGE;
    let limit = if args.json || args.members { page } else { 0 };
    let mut answer: GroupShow = control.call(&Request::Show {
        group: args.group.clone(),
        offset: 0,
        limit,
    })?;
    let mut next_offset = answer.next_offset.take();
    while let Some(offset) = next_offset {
        let next: GroupShow = control.call(&Request::Show {
            group: args.group.clone(),
            offset,
            limit: page,
        })?;
        if next.member_list.is_empty() {
            break;
        }
        answer.member_list.extend(next.member_list);
        next_offset = next.next_offset;
    }
    if args.json {
        let mut line = serde_json::to_value(&answer)
            .map_err(|e| CliError::other(format!("cannot print the answer: {e}")))?;
        if let Value::Object(map) = &mut line {
            map.remove("next_offset");
        }
        say(&line.to_string());
        return Ok(());
    }
    let s = &answer.summary;
    say(&format!("group    {}", s.group));
    say(&format!("epoch    {}", s.epoch));
    say(&format!("scheme   {}", s.scheme.as_str()));
    say(&format!("alg      {}", answer.alg.as_str()));
    say(&format!(
        "members  {} ({} hold epoch {})",
        s.members, s.current, s.epoch
    ));
    for c in &answer.held_counts {
        let held = match c.epoch {
            Some(e) => format!("hold epoch {e}"),
            None => "hold no epoch yet".to_owned(),
        };
        say(&format!("         {} {held}", c.members));
    }
    if !args.members {
        if s.members != 0 {
            say("");
            say("(--members lists them)");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .member_list
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.role.as_str().to_owned(),
                text(m.sender_id.as_ref()),
                text(m.leaf),
                text(m.held),
                if m.current { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    if rows.is_empty() {
        say("");
        say("no members yet: add them with `sealcast group add`");
        return Ok(());
    }
    say("");
    for line in table(
        &["MEMBER", "ROLE", "SENDER", "LEAF", "HELD", "CURRENT"],
        &rows,
    ) {
        say(&line);
    }
    Ok(())
}

/// `sealcast group list`.
pub fn list(args: &ListArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: Groups = control.call(&Request::List {})?;
    if args.json {
        say(&json_line(&answer)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.epoch.to_string(),
                g.scheme.as_str().to_owned(),
                g.members.to_string(),
                g.current.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        note("no groups yet: create one with `sealcast group create --config …`");
        return Ok(());
    }
    for line in table(&["GROUP", "EPOCH", "SCHEME", "MEMBERS", "CURRENT"], &rows) {
        say(&line);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn member_specs_and_tables() {
        assert_eq!(
            parse_member("door-1:receiver").unwrap(),
            ("door-1".to_owned(), "receiver".to_owned())
        );
        assert_eq!(parse_member("a:b:sender").unwrap().0, "a:b");
        assert!(parse_member("door-1").is_err());
        assert!(parse_member("door-1:admin").is_err());
        let t = table(
            &["A", "BB"],
            &[
                vec!["long-name".into(), "x".into()],
                vec!["s".into(), "yy".into()],
            ],
        );
        assert_eq!(t, vec!["A          BB", "long-name  x", "s          yy"]);
    }

    #[test]
    fn members_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.txt");
        std::fs::write(&f, "# doors\ndoor-1 receiver\n\n  gw-1   sender  \n").unwrap();
        assert_eq!(
            members_from_file(&f).unwrap(),
            vec![
                ("door-1".to_owned(), "receiver".to_owned()),
                ("gw-1".to_owned(), "sender".to_owned())
            ]
        );
        std::fs::write(&f, "door-1\n").unwrap();
        assert!(
            members_from_file(&f)
                .unwrap_err()
                .to_string()
                .contains(":1:")
        );
        std::fs::write(&f, "door-1 owner\n").unwrap();
        assert!(members_from_file(&f).is_err());
    }
}
