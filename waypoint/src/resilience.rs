//! Per-request resilience policies, as pure functions and small state objects the request path calls: retry
//! decisions, retry budgets, backoff, fault injection, timeouts, CORS, and the bounded body buffer that lets a
//! request be replayed.

pub mod backoff;
pub mod budget;
pub mod cors;
pub mod fault;
pub mod replay;
pub mod retry;
pub mod timeout;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use cors::{Cors, OriginMatch};
pub use fault::{Abort, AbortFault, Delay, Fault, FaultDecision};
pub use replay::{DEFAULT_MAX_REPLAY_BYTES, ReplayBody};
pub use retry::{Decision, Outcome, RetryOn, RetryPolicy};
pub use timeout::{Deadlines, Timeouts, deadlines, format_grpc_timeout, parse_grpc_timeout};
