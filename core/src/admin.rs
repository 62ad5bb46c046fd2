//! The admin server (localhost:15000): `/config_dump`, `/logging`, `/quitquitquit`.

use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpListener;

use crate::drain::DrainWatcher;
use crate::logging::LogHandle;
use crate::metrics::{serve_http, text};

/// What `/config_dump` shows.
pub trait ConfigDump: Send + Sync {
    fn config_dump(&self) -> serde_json::Value;
}

pub struct AdminServer {
    listener: TcpListener,
    log: LogHandle,
    on_quit: Arc<dyn Fn() + Send + Sync>,
    dump: Arc<dyn ConfigDump>,
}

const PLAIN: &str = "text/plain; charset=utf-8";
const INDEX: &str = "admin endpoints:\n  /config_dump     the proxy's state, config and certificates (JSON)\n  \
/logging         POST; ?level=<filter> sets the log level, ?reset restores it, no query shows it\n  \
/quitquitquit    POST: graceful shutdown\n";

impl AdminServer {
    pub fn new(
        listener: TcpListener,
        log: LogHandle,
        on_quit: Box<dyn Fn() + Send + Sync>,
        dump: Arc<dyn ConfigDump>,
    ) -> Self {
        AdminServer {
            listener,
            log,
            on_quit: Arc::from(on_quit),
            dump,
        }
    }

    pub async fn run(self, drain: DrainWatcher) {
        let AdminServer {
            listener,
            log,
            on_quit,
            dump,
        } = self;
        serve_http(listener, drain, move |req| {
            let (log, on_quit, dump) = (log.clone(), on_quit.clone(), dump.clone());
            async move {
                let post = req.method() == http::Method::POST;
                match req.uri().path() {
                    "/config_dump" => {
                        let body =
                            serde_json::to_string_pretty(&dump.config_dump()).unwrap_or_default();
                        text(StatusCode::OK, "application/json", body)
                    }
                    "/quitquitquit" if post => {
                        on_quit();
                        text(StatusCode::OK, PLAIN, "shutdown now\n")
                    }
                    "/logging" if post => logging(&log, req.uri().query()),
                    "/quitquitquit" | "/logging" => {
                        text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "use POST\n")
                    }
                    "/" => text(StatusCode::OK, PLAIN, INDEX),
                    _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
                }
            }
        })
        .await
    }
}

fn logging(log: &LogHandle, query: Option<&str>) -> http::Response<crate::metrics::Body> {
    let mut level = None;
    let mut reset = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("level", v)) => {
                level = Some(
                    v.replace("%2C", ",")
                        .replace("%3A", ":")
                        .replace("%3D", "="),
                )
            }
            None if pair == "reset" => reset = true,
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    PLAIN,
                    format!("unknown parameter {pair:?}\n"),
                );
            }
        }
    }
    if reset {
        log.reset();
    } else if let Some(level) = level
        && let Err(e) =
            filter_from_admin(&level).and_then(|f| log.set(&f).map_err(|e| e.to_string()))
    {
        return text(StatusCode::BAD_REQUEST, PLAIN, format!("{e}\n"));
    }
    text(
        StatusCode::OK,
        PLAIN,
        format!("current log level is {}\n", log.current()),
    )
}

/// Upstream's `/logging?level=` syntax, `<level>` or `<module>:<level>,...`, as an `EnvFilter` directive list;
/// anything that is not a known level is refused (EnvFilter would read a bare word as a target name).
fn filter_from_admin(spec: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let mut out = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.rsplit_once([':', '=']) {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        let level = level.to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!(
                "invalid log level {level:?} in {directive:?} (expected one of {})",
                LEVELS.join(", ")
            ));
        }
        match target {
            Some(t)
                if t.is_empty()
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c)) =>
            {
                return Err(format!("invalid module {t:?}"));
            }
            Some(t) => out.push(format!("{t}={level}")),
            None => out.push(level),
        }
    }
    if out.is_empty() {
        return Err("empty log level".into());
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::filter_from_admin;

    #[test]
    fn admin_log_levels() {
        assert_eq!(filter_from_admin("debug").unwrap(), "debug");
        assert_eq!(
            filter_from_admin("ambit_ztunnel:debug,h2:WARN").unwrap(),
            "ambit_ztunnel=debug,h2=warn"
        );
        assert_eq!(
            filter_from_admin("info,access=debug").unwrap(),
            "info,access=debug"
        );
        for bad in [
            "",
            "loud",
            "x:loud",
            ":debug",
            "a b:debug",
            "not%20a%20level",
        ] {
            assert!(filter_from_admin(bad).is_err(), "{bad}");
        }
    }
}
