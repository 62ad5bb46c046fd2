//! Ambit's `FaultInjection` extension filter: an HTTPRoute or GRPCRoute rule filter
//! `{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: FaultInjection, name: <name>}}` names a
//! `FaultInjection` object in the route's namespace, whose `spec` becomes the rule's `Route.fault`. The conversion
//! is VirtualService `fault`'s ([`super::virtual_service`]), so both kinds validate and behave alike.
//!
//! # Reference: `FaultInjection` (`ambit.dev/v1alpha1`, namespaced)
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `spec.delay.fixedDelay` | duration (`5s`, `1.5s`, `500ms`; Istio's syntax) | required with `delay` | how long the waypoint waits before it makes the upstream request |
//! | `spec.delay.percentage` | number 0-100, or `{value: <number>}` | 100 | share of requests delayed |
//! | `spec.abort.httpStatus` | integer 200-599 | one of `httpStatus`, `grpcStatus` | the status the waypoint answers with, no upstream request |
//! | `spec.abort.grpcStatus` | gRPC status name (`UNAVAILABLE`) or number (`14`) | one of `httpStatus`, `grpcStatus` | gRPC requests get a trailers-only response with this `grpc-status`; other requests the HTTP status Envoy maps it to (`UNAVAILABLE` → 503) |
//! | `spec.abort.percentage` | number 0-100, or `{value: <number>}` | 100 | share of requests aborted |
//!
//! At least one of `delay` and `abort` is required; `httpStatus` and `grpcStatus` are mutually exclusive (as in
//! VirtualService). Semantics are Envoy's: the delay and the abort are drawn independently, each with its own
//! percentage; a request drawn for both is delayed, then aborted. Access logs flag them `DI` and `FI`.
//!
//! ```yaml
//! apiVersion: ambit.dev/v1alpha1
//! kind: FaultInjection
//! metadata: {name: ratings-faults, namespace: bookinfo}
//! spec:
//!   delay: {fixedDelay: 5s, percentage: 10}
//!   abort: {httpStatus: 503, percentage: 50}
//! ---
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata: {name: ratings, namespace: bookinfo}
//! spec:
//!   parentRefs: [{group: "", kind: Service, name: ratings, port: 9080}]
//!   rules:
//!   - matches: [{headers: [{name: end-user, value: jason}]}]
//!     filters:
//!     - type: ExtensionRef
//!       extensionRef: {group: ambit.dev, kind: FaultInjection, name: ratings-faults}
//!     backendRefs: [{name: ratings, port: 9080}]
//! ```
//!
//! # What goes wrong, and what happens then
//!
//! - **The FaultInjection is missing, or invalid** (a field out of range, an unknown field): the filter cannot be
//!   applied and Gateway API says such a filter "MUST NOT be skipped; requests that would have been processed by
//!   that filter MUST receive a HTTP error response". The rule is kept and answers 500 (a direct response, before
//!   any filter or backend), and the route's `ResolvedRefs` is `False` (reason `BackendNotFound` for a missing
//!   object, `UnsupportedValue` for an invalid one — the reasons Envoy Gateway uses for the same cases), as for a
//!   backend that does not resolve. An invalid FaultInjection's own status says why (`Accepted=False Invalid`
//!   with `validationMessages`).
//! - **More than one FaultInjection filter in one rule**: a rule has one fault, so the rule is invalid and dropped,
//!   like any other invalid value in the route itself (see [`super::routes`]).
//! - **A FaultInjection filter in a `backendRefs[].filters` list**: faults apply per rule, so the backend is kept
//!   with `invalid` set (500 when picked) and `ResolvedRefs=False UnsupportedValue`.
//! - **ExtensionRefs to any other group or kind** (and `ambit.dev` kinds other than `FaultInjection`) are skipped,
//!   as every filter type the waypoint does not implement.

use std::collections::BTreeMap;

use ambit_proto::waypoint::FaultInjection as PbFault;
use serde_json::{Value, json};

use super::istio_hosts::Messages;
use super::status::condition;
use super::virtual_service::convert_fault;
use crate::index::{Index, Name};
use crate::sources::ambit::{FaultAbortSpec, FaultDelaySpec, FaultInjectionSpec, FaultPercent};
use crate::sources::istio::{Percent, VsFault, VsFaultAbort, VsFaultDelay};
use crate::sources::routes::HttpRouteFilter;

pub const AMBIT_GROUP: &str = "ambit.dev";
pub const FAULT_INJECTION_KIND: &str = "FaultInjection";

/// Every FaultInjection of the index, converted: the fault, or the validation errors (`<field>: <message>`).
pub type Faults = BTreeMap<Name, Result<PbFault, Vec<String>>>;

/// Converts one `spec`.
pub fn convert(spec: &FaultInjectionSpec) -> Result<PbFault, Vec<String>> {
    let mut m = Messages::default();
    m.unsupported_strict("spec", &spec.unknown, &[]);
    let pct = |p: &Option<FaultPercent>| p.map(|p| Percent { value: p.value() });
    let vs = VsFault {
        delay: spec.delay.as_ref().map(|d: &FaultDelaySpec| VsFaultDelay {
            fixed_delay: d.fixed_delay.clone(),
            percentage: pct(&d.percentage),
            unknown: d.unknown.clone(),
        }),
        abort: spec.abort.as_ref().map(|a: &FaultAbortSpec| VsFaultAbort {
            http_status: a.http_status,
            grpc_status: a.grpc_status.clone(),
            percentage: pct(&a.percentage),
            unknown: a.unknown.clone(),
        }),
    };
    let fault = convert_fault(&mut m, "spec", &vs);
    if m.errors.is_empty() {
        Ok(fault)
    } else {
        Err(m.errors)
    }
}

pub fn convert_all(index: &Index) -> Faults {
    index
        .fault_injections
        .iter()
        .map(|(key, f)| (key.clone(), convert(&f.spec)))
        .collect()
}

/// Each FaultInjection's status, by `faultinjection/<ns>/<name>`: `Accepted` (`Invalid` with the messages).
pub fn status(faults: &Faults) -> BTreeMap<String, Value> {
    faults
        .iter()
        .map(|((ns, name), f)| {
            let value = match f {
                Ok(_) => json!({
                    "conditions": [condition("Accepted", true, "Accepted", "Configuration is valid")],
                }),
                Err(errors) => json!({
                    "conditions": [condition("Accepted", false, "Invalid", &errors.join("; "))],
                    "validationMessages": errors
                        .iter()
                        .map(|e| json!({"level": "Error", "message": e}))
                        .collect::<Vec<_>>(),
                }),
            };
            (format!("faultinjection/{ns}/{name}"), value)
        })
        .collect()
}

/// The name a filter refers to when it is an ExtensionRef to an `ambit.dev` `FaultInjection`.
pub fn fault_ref(f: &HttpRouteFilter) -> Option<&str> {
    let r = f
        .extension_ref
        .as_ref()
        .filter(|_| f.kind == "ExtensionRef")?;
    (r.group == AMBIT_GROUP && r.kind == FAULT_INJECTION_KIND).then_some(r.name.as_str())
}

/// What the FaultInjection filters of one rule amount to.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleFault {
    /// No FaultInjection filter.
    None,
    Fault(PbFault),
    /// The filter cannot be applied: the rule answers 500. `(ResolvedRefs reason, message)`.
    Unresolved(&'static str, String),
}

/// The fault of a rule whose `filters` are at `field` (`rules[0].filters`), in namespace `ns`. `Err` (the rule is
/// invalid) when more than one filter names a FaultInjection.
pub fn rule_fault(
    field: &str,
    filters: &[HttpRouteFilter],
    ns: &str,
    faults: &Faults,
) -> Result<RuleFault, String> {
    let mut refs = filters
        .iter()
        .enumerate()
        .filter_map(|(k, f)| fault_ref(f).map(|name| (k, name)));
    let Some((k, name)) = refs.next() else {
        return Ok(RuleFault::None);
    };
    if let Some((k2, _)) = refs.next() {
        return Err(format!(
            "{field}[{k2}]: only one FaultInjection filter per rule ({field}[{k}] is the first)"
        ));
    }
    let at = format!("{field}[{k}]");
    Ok(match faults.get(&(ns.to_owned(), name.to_owned())) {
        None => RuleFault::Unresolved(
            "BackendNotFound",
            format!("{at}: FaultInjection {ns}/{name} not found"),
        ),
        Some(Err(errors)) => RuleFault::Unresolved(
            "UnsupportedValue",
            format!(
                "{at}: FaultInjection {ns}/{name} is invalid: {}",
                errors.join("; ")
            ),
        ),
        Some(Ok(fault)) => RuleFault::Fault(*fault),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
