//! Test support shared by sealcast's test suites.
//!
//! Some tests need things a fresh machine lacks: the external test vectors
//! (`SEALCAST_VECTORS`), Python peers such as pycose (`SEALCAST_PYCOSE`), a
//! Mosquitto broker or PostgreSQL. Such a test asks [`require`] for its
//! resource. On a developer machine without it the test prints a loud
//! `NOT RUN` banner and returns; when `SEALCAST_REQUIRE_EXTERNAL=1` (set by
//! `.ci/run`) a missing resource fails the test instead, so CI never skips.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod acme;

/// Environment variable that turns a missing external resource into a failure.
pub const REQUIRE_ENV: &str = "SEALCAST_REQUIRE_EXTERNAL";

/// True when missing external resources must fail tests (CI).
pub fn external_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reads `var`; if it is unset or empty, either fails (in CI) or prints a
/// banner naming `test` and `why`, and returns `None`.
///
/// # Panics
/// When the variable is missing and [`external_required`] is true: that is
/// the point, CI must not skip.
#[allow(clippy::panic)]
pub fn require(var: &str, test: &str, why: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if external_required() {
                panic!("{test}: {var} is not set but {REQUIRE_ENV}=1 demands it ({why})");
            }
            // Written to the stderr handle directly, not with eprintln!, so the
            // test harness's output capture does not swallow the banner.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n==================== NOT RUN ====================\n\
                 {test}: {var} is not set, so this test did not run.\n\
                 It needs {why}.\n\
                 `.ci/run` sets it; see README.md, section \"Testing\".\n\
                 =================================================\n"
            );
            None
        }
    }
}

/// A test that cannot run here for a reason other than a missing variable
/// (not root, a tool absent): a loud NOT RUN banner naming `test` and
/// `why`, or a failure under [`REQUIRE_ENV`].
///
/// # Panics
/// When [`external_required`] is true: CI must not skip.
#[allow(clippy::panic)]
pub fn not_run(test: &str, why: &str) {
    if external_required() {
        panic!("{test}: {why}, but {REQUIRE_ENV}=1 demands that it runs");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n==================== NOT RUN ====================\n\
         {test}: {why}, so this test did not run.\n\
         `.ci/run` runs it; see README.md, section \"Testing\".\n\
         =================================================\n"
    );
}

/// A program the tests run (mosquitto, openssl …): the environment
/// variable `var` if set, else the PATH and the sbin folders (Debian
/// installs mosquitto in /usr/sbin, which a non-root PATH may lack). Not
/// found: a loud NOT RUN (a failure under [`REQUIRE_ENV`]) and `None`.
pub fn program(name: &str, var: &str, test: &str, why: &str) -> Option<PathBuf> {
    if let Ok(bin) = std::env::var(var)
        && !bin.is_empty()
    {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    // Only banners (or fails under REQUIRE_ENV): `var` is unset here.
    require(var, test, why).map(PathBuf::from)
}

/// Whether the tests run as root (mosquitto then needs `user root` to read
/// the test's private folders).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// The folder of external test vectors (`SEALCAST_VECTORS`, normally
/// `../shared/vectors`), or `None` after a loud skip.
pub fn vectors_dir(test: &str) -> Option<PathBuf> {
    require(
        "SEALCAST_VECTORS",
        test,
        "the external test vectors (Wycheproof, COSE WG, C2SP CCTV, RFC 8613) in a folder",
    )
    .map(PathBuf::from)
}

/// Reads a file below the vectors folder.
///
/// # Panics
/// When the file is missing: a configured vectors folder must be complete.
#[allow(clippy::panic)]
pub fn read_vector(dir: &std::path::Path, rel: &str) -> String {
    let path = dir.join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read vector file {}: {e}", path.display()))
}

/// Decodes hex, panicking with the vector's name on bad input.
///
/// # Panics
/// On malformed hex: a broken vector file must not pass silently.
#[allow(clippy::panic)]
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        panic!("odd-length hex string: {s}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
        })
        .collect()
}
