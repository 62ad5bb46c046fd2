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
        && let Err(e) = log.set(&level)
    {
        return text(StatusCode::BAD_REQUEST, PLAIN, format!("{e}\n"));
    }
    text(
        StatusCode::OK,
        PLAIN,
        format!("current log level is {}\n", log.current()),
    )
}
