//! Logging: tracing with an `EnvFilter` from `RUST_LOG` (or a default) that can be changed at run time through
//! the admin server's `/logging`.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level {0:?}: {1}")]
    Invalid(String, String),
    #[error("logging is not reloadable here")]
    NotReloadable,
}

type Handle = reload::Handle<EnvFilter, Registry>;

/// Changes the process's log filter.
#[derive(Clone)]
pub struct LogHandle {
    inner: Option<Arc<(Handle, String)>>,
}

/// Whether the process environment asks for JSON lines (`LOG_FORMAT=json`, what the charts' `logAsJson` sets).
pub fn json_from_env() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json")
}

/// Installs the global subscriber. `json` selects JSON lines (`LOG_FORMAT=json`).
pub fn init(default_filter: &str, json: bool) -> LogHandle {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_owned());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init()
    };
    match installed {
        Ok(()) => LogHandle {
            inner: Some(Arc::new((handle, initial))),
        },
        Err(_) => LogHandle::noop(),
    }
}

impl LogHandle {
    /// A handle that changes nothing (tests, or when another subscriber is already installed).
    pub fn noop() -> Self {
        LogHandle { inner: None }
    }

    pub fn current(&self) -> String {
        match &self.inner {
            Some(h) => h.0.with_current(|f| f.to_string()).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// `spec` is an `EnvFilter` directive list: `debug`, or `ambit_ztunnel=debug,h2=info`.
    pub fn set(&self, spec: &str) -> Result<(), LogError> {
        let filter = EnvFilter::try_new(spec)
            .map_err(|e| LogError::Invalid(spec.to_owned(), e.to_string()))?;
        match &self.inner {
            Some(h) => h.0.reload(filter).map_err(|_| LogError::NotReloadable),
            None => Err(LogError::NotReloadable),
        }
    }

    /// Back to the filter the process started with.
    pub fn reset(&self) {
        if let Some(h) = &self.inner {
            let _ = self.set(&h.1);
        }
    }
}
