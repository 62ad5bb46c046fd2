//! One rule's converted parts: its filters and backends (through the route's [`Resolver`]), its retry policy
//! ([`super::retry`]) and its fault ([`crate::compute::fault_injection`]), or why the rule is invalid.

use ambit_proto::waypoint::{BackendRef, DirectResponse, FaultInjection, Filter, RetryPolicy};

use super::super::fault_injection::{self, Faults, RuleFault, fault_ref};
use super::{Resolver, RuleIn, retry};
use crate::sources::routes::HttpBackendRef;

/// What one valid rule becomes (besides what it copies from the route).
pub(super) struct RuleParts {
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultInjection>,
    /// A 500 for a FaultInjection filter that cannot be applied.
    pub direct_response: Option<DirectResponse>,
}

/// Converts rule `i`; `None` when it is invalid (its messages added to `dropped`).
pub(super) fn rule_parts(
    resolver: &mut Resolver<'_>,
    faults: &Faults,
    i: usize,
    rule: &RuleIn<'_>,
    dropped: &mut Vec<String>,
) -> Option<RuleParts> {
    let field = format!("rules[{i}]");
    let retry = retry::retry(&format!("{field}.retry"), rule.retry);
    let fault = fault_injection::rule_fault(
        &format!("{field}.filters"),
        rule.filters,
        resolver.ns,
        faults,
    );
    let (retry, fault) = match (retry, fault) {
        (Ok(r), Ok(f)) => (r, f),
        (r, f) => {
            dropped.extend(r.err().unwrap_or_default());
            dropped.extend(f.err());
            return None;
        }
    };
    let (fault, direct_response) = match fault {
        RuleFault::None => (None, None),
        RuleFault::Fault(f) => (Some(f), None),
        RuleFault::Unresolved(reason, message) => {
            resolver.problem.get_or_insert((reason, message.clone()));
            let answer = DirectResponse {
                status: 500,
                body: message,
            };
            (None, Some(answer))
        }
    };
    let filters = resolver.filters(rule.filters);
    let backends = rule
        .backends
        .iter()
        .enumerate()
        .map(|(k, b)| resolver.backend_ref(&format!("{field}.backendRefs[{k}]"), b))
        .collect();
    Some(RuleParts {
        filters,
        backends,
        retry,
        fault,
        direct_response,
    })
}

impl Resolver<'_> {
    /// A `backendRefs` entry with its filters. A FaultInjection filter there cannot apply (faults are per rule),
    /// and a filter that cannot apply must not be skipped: the backend is marked `invalid`.
    fn backend_ref(&mut self, field: &str, b: &HttpBackendRef) -> BackendRef {
        let filters = self.filters(&b.filters);
        let mut out = self.backend(&b.backend, b.weight.unwrap_or(1), filters);
        if let Some(k) = b.filters.iter().position(|f| fault_ref(f).is_some()) {
            let message =
                format!("{field}.filters[{k}]: FaultInjection applies to rules, not to backends");
            if out.invalid.is_empty() {
                out.invalid = message.clone();
            }
            self.problem.get_or_insert(("UnsupportedValue", message));
        }
        out
    }
}
