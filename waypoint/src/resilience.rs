//! Per-request resilience policies, as pure functions and small state objects the request path calls: retry
//! decisions, retry budgets, backoff, fault injection, timeouts, CORS, and the bounded body buffer that lets a
//! request be replayed.
