//! `sealcast completions SHELL` and `sealcast man`: shell completions and
//! man pages generated from the same clap definitions as `--help`, so they
//! never drift from the commands.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::{CliError, Result};
use crate::files::{self, Overwrite, PUBLIC_MODE};

/// Print a shell completion script.
///
/// Example: sealcast completions bash > /etc/bash_completion.d/sealcast
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells completions are generated for.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// Write man pages: sealcast.1 and one page per subcommand
/// (sealcast-manager-serve.1, …).
///
/// Example: sealcast man --out-dir /usr/local/share/man/man1
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory for the pages (must exist).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Replace existing pages.
    #[arg(long)]
    force: bool,
}

/// Writes the completion script of `args.shell` for `command`.
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> Result<()> {
    use clap_complete::Shell as S;
    let shell = match args.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
        Shell::Elvish => S::Elvish,
        Shell::Powershell => S::PowerShell,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "sealcast", &mut out);
    files::write_output(None, &out, files::OutputKind::Payload, PUBLIC_MODE)
}

/// Writes a man page for `command` and each of its subcommands, recursively.
pub fn man(args: &ManArgs, command: clap::Command) -> Result<()> {
    if !args.out_dir.is_dir() {
        return Err(CliError::usage(format!(
            "--out-dir {} is not a directory; create it first",
            args.out_dir.display()
        )));
    }
    let mut written = 0usize;
    let command = command.version(env!("CARGO_PKG_VERSION"));
    write_pages(args, &command, "sealcast", &mut written)?;
    crate::cmd::say(&format!(
        "wrote {written} man pages to {}",
        args.out_dir.display()
    ));
    Ok(())
}

fn write_pages(
    args: &ManArgs,
    command: &clap::Command,
    name: &str,
    written: &mut usize,
) -> Result<()> {
    let page = command.clone().name(name.to_owned());
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .map_err(|e| CliError::other(format!("cannot render the man page of {name}: {e}")))?;
    files::write_atomic(
        &args.out_dir.join(format!("{name}.1")),
        &out,
        PUBLIC_MODE,
        Overwrite::from_force(args.force),
    )?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(args, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}
