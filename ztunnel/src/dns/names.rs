//! Which service hostnames a query name may mean (spec 7): the name itself, its Kubernetes expansions for the
//! client's namespace, and the same for the name with a search domain stripped; each tried exactly, then as
//! wildcards from most to least specific.

/// One hostname to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Reached by stripping a search domain: the answer carries a CNAME to `name`.
    pub stripped: bool,
}

/// The search list of a pod in namespace `ns` (shared mode).
pub fn shared_search(ns: &str, cd: &str) -> Vec<String> {
    vec![format!("{ns}.svc.{cd}"), format!("svc.{cd}"), cd.to_owned()]
}

/// `name` and its expansions by label count, in order.
fn expansions(name: &str, ns: &str, cd: &str) -> Vec<String> {
    let labels: Vec<&str> = name.split('.').collect();
    let mut out = vec![name.to_owned()];
    match labels.len() {
        1 => out.push(format!("{name}.{ns}.svc.{cd}")),
        2 => {
            out.push(format!("{name}.svc.{cd}"));
            out.push(format!("{name}.{ns}.svc.{cd}"));
        }
        3 => {
            if labels[2] == "svc" {
                out.push(format!("{name}.{cd}"));
            }
            out.push(format!("{name}.svc.{cd}"));
        }
        4 if labels[3] == "svc" => out.push(format!("{name}.{cd}")),
        _ => {}
    }
    out
}

/// Every candidate for `name` (lower case, no trailing dot), without duplicates, in the order to try them.
pub fn candidates(name: &str, ns: &str, cd: &str, search: &[String]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |n: String, stripped: bool| {
        if !out.iter().any(|c| c.name == n) {
            out.push(Candidate { name: n, stripped });
        }
    };
    for e in expansions(name, ns, cd) {
        push(e, false);
    }
    for s in search {
        if let Some(base) = name.strip_suffix(&format!(".{s}")) {
            for e in expansions(base, ns, cd) {
                push(e, true);
            }
        }
    }
    out
}

/// `name`, then `*.rest` for each shorter suffix with at least two labels (`a.b.c` → `a.b.c`, `*.b.c`).
pub fn with_wildcards(name: &str) -> Vec<String> {
    let mut out = vec![name.to_owned()];
    let mut rest = name;
    while let Some((_, tail)) = rest.split_once('.') {
        if tail.contains('.') {
            out.push(format!("*.{tail}"));
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &[Candidate]) -> Vec<(&str, bool)> {
        c.iter().map(|c| (c.name.as_str(), c.stripped)).collect()
    }

    #[test]
    fn expansions_by_label_count() {
        let search = shared_search("demo", "cluster.local");
        let table: &[(&str, &[(&str, bool)])] = &[
            (
                "server",
                &[("server", false), ("server.demo.svc.cluster.local", false)],
            ),
            (
                "server.other",
                &[
                    ("server.other", false),
                    ("server.other.svc.cluster.local", false),
                    ("server.other.demo.svc.cluster.local", false),
                ],
            ),
            (
                "server.other.svc",
                &[
                    ("server.other.svc", false),
                    ("server.other.svc.cluster.local", false),
                    ("server.other.svc.svc.cluster.local", false),
                ],
            ),
            (
                "a.b.c.svc",
                &[("a.b.c.svc", false), ("a.b.c.svc.cluster.local", false)],
            ),
            (
                "www.example.com",
                &[
                    ("www.example.com", false),
                    ("www.example.com.svc.cluster.local", false),
                ],
            ),
            (
                // The resolver appended the pod's first search domain: strip it and answer with a CNAME.
                "server.demo.svc.cluster.local.demo.svc.cluster.local",
                &[
                    (
                        "server.demo.svc.cluster.local.demo.svc.cluster.local",
                        false,
                    ),
                    ("server.demo.svc.cluster.local", true),
                    ("server.demo.svc.cluster.local.demo", true),
                    ("server.demo.svc.cluster.local.demo.svc", true),
                ],
            ),
        ];
        for (q, want) in table {
            assert_eq!(
                names(&candidates(q, "demo", "cluster.local", &search)),
                want.to_vec(),
                "{q}"
            );
        }
        // An FQDN is tried as is first; its stripped forms come after.
        let c = candidates(
            "server.demo.svc.cluster.local",
            "demo",
            "cluster.local",
            &search,
        );
        assert_eq!(c[0].name, "server.demo.svc.cluster.local");
        assert!(!c[0].stripped);
        assert!(c.iter().skip(1).all(|c| c.stripped));
    }

    #[test]
    fn wildcards_from_most_to_least_specific() {
        assert_eq!(
            with_wildcards("a.b.example.com"),
            vec!["a.b.example.com", "*.b.example.com", "*.example.com"]
        );
        assert_eq!(with_wildcards("server"), vec!["server"]);
    }
}
