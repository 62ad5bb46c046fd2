//! HTTPRoute/GRPCRoute `hostnames` as the Gateway API CRD validates them (the manifest source has no CRD
//! validation): 1 to 253 characters of lower-case RFC 1123 labels, optionally after one leading `*.` label, and
//! not an IP address (`ambit_core::hostname`, which the waypoint checks again, NACKing a rule that breaks them). A
//! route with an invalid hostname is not accepted by any parent, as Kubernetes would refuse the object.

/// The problems of a route's `hostnames`, one message per bad entry (`spec.hostnames[i]: ...`).
pub fn problems(hostnames: &[String]) -> Vec<String> {
    hostnames
        .iter()
        .enumerate()
        .filter_map(|(i, h)| check(h).err().map(|e| format!("spec.hostnames[{i}]: {e}")))
        .collect()
}

fn check(s: &str) -> Result<(), String> {
    ambit_core::hostname::Hostname::parse(s).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_hostname_is_named_by_its_index() {
        assert!(problems(&["echo".into(), "*.example.com".into()]).is_empty());
        assert_eq!(
            problems(&["ok.com".into(), "OK.com".into(), "1.2.3.4".into()]),
            vec![
                "spec.hostnames[1]: \"OK.com\" is not a lower-case RFC 1123 hostname (optionally prefixed by a \
                 single \"*.\" label)"
                    .to_owned(),
                "spec.hostnames[2]: \"1.2.3.4\" is an IP address; hostnames are names".to_owned(),
            ]
        );
    }
}
