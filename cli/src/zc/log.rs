//! `ambit ztunnel-config log`: a ztunnel's log level through its admin `/logging`, as istioctl does it: `POST
//! /logging` shows the level, `POST /logging?level=<directives>` changes it, `POST /logging?reset` restores the
//! ztunnel's default. Both ztunnels answer `current log level is <filter>`.
//!
//! `--level` is istioctl's `[<logger>:]<level>,...` with istioctl's level names (`warning` and `critical` become
//! the ztunnel's `warn` and `error`); a logger's level is sent as `<logger>=<level>`, the form both ztunnels
//! accept.

use super::source::{Mesh, SourceError, Ztunnel};

/// The levels istioctl accepts, and what the ztunnel calls each.
const LEVELS: [(&str, &str); 8] = [
    ("trace", "trace"),
    ("debug", "debug"),
    ("info", "info"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("error", "error"),
    ("critical", "error"),
    ("off", "off"),
];

/// What to do with the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRequest {
    Show,
    Set(String),
    Reset,
}

impl LogRequest {
    /// From `--level` and `--reset`.
    pub fn new(level: Option<&str>, reset: bool) -> Result<LogRequest, String> {
        match (level, reset) {
            (Some(_), true) => Err("--level cannot be combined with --reset".into()),
            (None, true) => Ok(LogRequest::Reset),
            (None, false) => Ok(LogRequest::Show),
            (Some(l), false) => directives(l).map(LogRequest::Set),
        }
    }

    /// The admin path to `POST`.
    pub fn path(&self) -> String {
        match self {
            LogRequest::Show => "/logging".into(),
            LogRequest::Reset => "/logging?reset".into(),
            LogRequest::Set(d) => format!("/logging?level={}", encode(d)),
        }
    }
}

/// istioctl's `[<logger>:]<level>,...` as the ztunnel's directives (`<level>` or `<logger>=<level>`, comma
/// separated). A logger name may hold `::` (a Rust module path); its level is after the last `:` or `=`.
pub fn directives(spec: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty logging level in {spec:?}"));
        }
        let (logger, level) = match item.rfind([':', '=']) {
            Some(i) => (Some(&item[..i]), &item[i + 1..]),
            None => (None, item),
        };
        let logger = logger.map(|l| l.trim_end_matches([':', '=']));
        let level = LEVELS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(level))
            .map(|(_, z)| *z)
            .ok_or_else(|| {
                format!(
                    "unrecognized logging level: {level} (one of {})",
                    LEVELS
                        .iter()
                        .map(|(n, _)| *n)
                        .filter(|n| *n != "warn")
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        match logger {
            Some("") => return Err(format!("no logger name before the level in {item:?}")),
            Some(l) => out.push(format!("{l}={level}")),
            None => out.push(level.to_owned()),
        }
    }
    Ok(out.join(","))
}

/// Percent-encodes a query value (unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `req` to every ztunnel of `targets`: `<pod>.<namespace>:` and its answer for each, as istioctl prints it;
/// the failures, one per ztunnel, joined into one line.
pub fn run(
    mesh: &dyn Mesh,
    targets: &[Ztunnel],
    req: &LogRequest,
) -> (String, Result<(), SourceError>) {
    let mut out = String::new();
    let mut failed = Vec::new();
    for z in targets {
        match mesh.admin(z, "POST", &req.path()) {
            Ok(r) if r.status == 200 => {
                out.push_str(&format!(
                    "{}:\n{}\n",
                    z.id(),
                    String::from_utf8_lossy(&r.body)
                ));
            }
            Ok(r) => failed.push(format!(
                "{}: the ztunnel answered {} to POST {} at {}: {}",
                z.id(),
                r.status,
                req.path(),
                r.addr,
                r.first_line()
            )),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let result = if failed.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Ztunnels(failed.join("; ")))
    };
    (out, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istioctl_levels_become_ztunnel_directives() {
        assert_eq!(directives("debug").unwrap(), "debug");
        assert_eq!(directives("warning").unwrap(), "warn");
        assert_eq!(
            directives("access:debug,info").unwrap(),
            "access=debug,info"
        );
        assert_eq!(
            directives("ambit_ztunnel::proxy:CRITICAL").unwrap(),
            "ambit_ztunnel::proxy=error"
        );
        assert_eq!(directives("h2=warning").unwrap(), "h2=warn");
        let e = directives("loud").unwrap_err();
        assert!(
            e.starts_with("unrecognized logging level: loud (one of trace, debug"),
            "{e}"
        );
        assert!(directives("access:").is_err());
        assert!(directives(":debug").is_err());
        assert!(directives("info,,debug").is_err());
    }

    #[test]
    fn requests_and_their_paths() {
        assert_eq!(LogRequest::new(None, false).unwrap().path(), "/logging");
        assert_eq!(
            LogRequest::new(None, true).unwrap().path(),
            "/logging?reset"
        );
        assert_eq!(
            LogRequest::new(Some("ambit_ztunnel::proxy:debug,info"), false)
                .unwrap()
                .path(),
            "/logging?level=ambit_ztunnel%3A%3Aproxy%3Ddebug%2Cinfo"
        );
        assert_eq!(
            LogRequest::new(Some("debug"), true).unwrap_err(),
            "--level cannot be combined with --reset"
        );
    }
}
