//! A reader for the Prometheus / OpenMetrics text format, enough to assert on metric samples.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Every `(key, value)` pair is a label of this sample.
    pub fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// All samples in `text` (comments and unparsable lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// Samples named `name` whose labels include `want`.
pub fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && s.matches(want))
        .collect()
}

/// Sum of the values of [`find`].
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    find(samples, name, want).iter().map(|s| s.value).sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        s = &s[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_tcp_connections_opened The number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/default/sa/a",connection_security_policy="mutual_tls"} 2
istio_tcp_connections_opened_total{reporter="source",source_principal="spiffe://cluster.local/ns/default/sa/a",connection_security_policy="unknown"} 1
istio_build{component="ztunnel",tag="a \"quoted\", v\\1"} 1
process_open_fds 17
# EOF
"#;

    #[test]
    fn parses_samples_and_labels() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "istio_tcp_connections_opened_total");
        assert_eq!(s[0].label("connection_security_policy"), Some("mutual_tls"));
        assert_eq!(s[0].value, 2.0);
        assert_eq!(s[2].label("tag"), Some("a \"quoted\", v\\1"));
        assert_eq!(s[3].name, "process_open_fds");
        assert!(s[3].labels.is_empty());
        assert_eq!(s[3].value, 17.0);
    }

    #[test]
    fn finds_by_labels() {
        let s = parse(TEXT);
        let name = "istio_tcp_connections_opened_total";
        let want = [
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ];
        assert_eq!(sum(&s, name, &want), 2.0);
        assert_eq!(find(&s, name, &[("reporter", "source")]).len(), 1);
        assert!(find(&s, name, &[("reporter", "nobody")]).is_empty());
    }
}
