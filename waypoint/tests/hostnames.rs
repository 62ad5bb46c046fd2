//! In-process: HTTPRoute `hostnames` on a route attached to the waypoint Gateway select by the request's
//! `Host`, a request whose host no route claims goes to the service itself, and the same hostnames on a
//! Service-attached route are ignored (GAMMA). Addresses are 127.0.74.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::Source;

const NET: u8 = 74;
const REVIEWS: &str = "reviews.demo.svc.cluster.local:9080";
const RATINGS: &str = "ratings.demo.svc.cluster.local:9080";

fn config() -> String {
    format!(
        r#"
services:
- {{name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.74.20],
   ports: [{{port: 9080, targetPort: 18081, protocol: http1}}],
   waypoint: {{namespace: demo, hostname: waypoint.demo.svc.cluster.local}}}}
- {{name: ratings, namespace: demo, hostname: ratings.demo.svc.cluster.local, vips: [10.96.74.21],
   ports: [{{port: 9080, targetPort: 18081, protocol: http1}}],
   waypoint: {{namespace: demo, hostname: waypoint.demo.svc.cluster.local}}}}
workloads:
- {{uid: client, name: client-0, namespace: demo, serviceAccount: client, ips: [127.0.{NET}.2], workloadName: client}}
- {{uid: v1, name: backend-0, namespace: demo, ips: [127.0.{NET}.21], tunnel: NONE,
   services: {{demo/reviews.demo.svc.cluster.local: {{9080: 18081}}, demo/ratings.demo.svc.cluster.local: {{9080: 18081}}}}}}
routes:
- name: demo/httproute/by-host/0
  namespace: demo
  routeName: by-host
  parents: [{{kind: GATEWAY, namespace: demo, name: waypoint}}]
  hostnames: [reviews.example.com, "*.wild.example.com"]
  filters: [{{responseHeaderModifier: {{set: [{{name: x-route, value: by-host}}]}}}}]
  backends: [{{hostname: reviews.demo.svc.cluster.local, port: 9080, weight: 1}}]
- name: demo/httproute/on-ratings/0
  namespace: demo
  routeName: on-ratings
  parents: [{{kind: SERVICE, name: ratings.demo.svc.cluster.local}}]
  hostnames: [nobody.example.com]
  filters: [{{responseHeaderModifier: {{set: [{{name: x-route, value: on-ratings}}]}}}}]
  backends: [{{hostname: ratings.demo.svc.cluster.local, port: 9080, weight: 1}}]
"#
    )
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The status line and the `x-route` header of a GET with `host` over a CONNECT to `authority`.
async fn get(source: &Source, authority: &str, host: &str) -> (String, Option<String>) {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = source.raw(authority, req.as_bytes()).await;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let route = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-route: "))
        .map(str::to_owned);
    (status, route)
}

#[tokio::test]
async fn gateway_routes_select_by_host_and_service_routes_ignore_hostnames() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    write(&file, &config());
    let (_waypoint, source) = support::start_waypoint(
        &ca,
        &file,
        format!("127.0.{NET}.2:40000").parse().unwrap(),
        &[],
    )
    .await;
    support::http_backend(format!("127.0.{NET}.21:18081").parse().unwrap(), "backend").await;

    let ok = "HTTP/1.1 200 OK".to_owned();
    let by_host = Some("by-host".to_owned());
    // The Gateway route claims its hosts (port and case aside, wildcards one label deep or more).
    for host in [
        "reviews.example.com",
        "Reviews.Example.com:9080",
        "a.wild.example.com",
        "a.b.wild.example.com",
    ] {
        assert_eq!(
            get(&source, REVIEWS, host).await,
            (ok.clone(), by_host.clone()),
            "{host}"
        );
    }
    // Other hosts (the bare wildcard suffix too) reach the service as if no route were attached.
    for host in [REVIEWS, "wild.example.com", "other.example.com"] {
        assert_eq!(
            get(&source, REVIEWS, host).await,
            (ok.clone(), None),
            "{host}"
        );
    }
    // The Service-attached route on ratings applies whatever the Host, its hostnames notwithstanding.
    for host in [RATINGS, "reviews.example.com", "nobody.example.com"] {
        assert_eq!(
            get(&source, RATINGS, host).await,
            (ok.clone(), Some("on-ratings".to_owned())),
            "{host}"
        );
    }
}
