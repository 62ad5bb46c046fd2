//! The waypoint's xDS resources, through the same `decode_resource` its xDS handler calls, into a `Store` whose
//! snapshot is then built and dumped.

use std::net::IpAddr;
use std::path::Path;

use ambit_proto::type_url as t;
use ambit_waypoint::app::{decode_resource, store_key};
use ambit_waypoint::state::{Resource, SelfInfo, Store};

use crate::records;

/// The seven resource types the waypoint subscribes to, indexed by the first byte of a record.
pub const TYPE_URLS: [&str; 7] = [
    t::ADDRESS,
    t::WAYPOINT_ROUTE,
    t::WAYPOINT_BACKEND_POLICY,
    t::WAYPOINT_RATE_LIMIT,
    t::WAYPOINT_REQUEST_AUTHENTICATION,
    t::WAYPOINT_AUTHORIZATION,
    t::ADDRESS,
];

/// A small mesh the fuzzed resources land in (and the waypoint_http target serves): one service behind this
/// waypoint with an unhealthy endpoint (no request ever leaves the process), routes with matches, filters,
/// redirects, rewrites, direct responses, CORS and faults, a backend policy, a rate limit, a RequestAuthentication
/// and AuthorizationPolicies. Also the seed of the local config targets.
pub const MESH_YAML: &str = r#"
services:
- {name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.0.20, "fd00::20"],
   ports: [{port: 9080, targetPort: 9080, protocol: http1}, {port: 9090, targetPort: 9090, protocol: grpc}],
   waypoint: {namespace: demo, hostname: waypoint.demo.svc.cluster.local}}
- {name: ratings, namespace: demo, hostname: ratings.demo.svc.cluster.local, vips: [10.96.0.21],
   ports: [{port: 9080, targetPort: 9080, protocol: http1}],
   waypoint: {namespace: demo, hostname: waypoint.demo.svc.cluster.local}}
workloads:
- {uid: reviews-v1, name: reviews-v1-0, namespace: demo, serviceAccount: reviews, ips: [10.244.1.5],
   tunnel: HBONE, healthy: false, services: {demo/reviews.demo.svc.cluster.local: {9080: 9080, 9090: 9090}},
   locality: {region: r1, zone: z1}}
- {uid: ratings-v1, name: ratings-v1-0, namespace: demo, serviceAccount: ratings, ips: [10.244.1.6],
   tunnel: HBONE, healthy: false, services: {demo/ratings.demo.svc.cluster.local: {9080: 9080}}}
routes:
- name: demo/httproute/reviews/0
  kind: HTTP
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo, port: 9080}]
  hostnames: [reviews.demo.svc.cluster.local, "*.example.com"]
  matches:
  - path: {type: PATH_PREFIX, value: /api}
    headers: [{type: EXACT, name: x-user, value: jason}]
    queryParams: [{type: REGULAR_EXPRESSION, name: v, value: "[0-9]+"}]
    method: GET
  - path: {type: EXACT, value: /exact}
    ignorePathCase: true
    withoutHeaders: [{type: EXACT, name: x-skip, value: "1"}]
  filters:
  - requestHeaderModifier: {set: [{name: x-set, value: a}], add: [{name: x-add, value: b}], remove: [x-remove]}
  - responseHeaderModifier: {set: [{name: x-resp, value: c}]}
  backends: [{hostname: reviews.demo.svc.cluster.local, namespace: demo, port: 9080, weight: 3},
             {hostname: ratings.demo.svc.cluster.local, namespace: demo, port: 9080, weight: 1}]
  timeouts: {requestMs: 15000}
  retry: {attempts: 2, retryOn: [5xx, reset], codes: [503]}
- name: demo/httproute/reviews/1
  kind: HTTP
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}]
  matches: [{path: {type: EXACT, value: /redirect}}]
  filters: [{requestRedirect: {scheme: https, hostname: example.com, port: 8443, statusCode: 301,
             path: {kind: REPLACE_FULL_PATH, value: /moved}}}]
- name: demo/httproute/reviews/2
  kind: HTTP
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}]
  matches: [{path: {type: PATH_PREFIX, value: /direct}}]
  directResponse: {status: 200, body: hello}
- name: demo/httproute/reviews/3
  kind: HTTP
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}]
  matches: [{path: {type: PATH_PREFIX, value: /rewrite}}]
  filters: [{urlRewrite: {hostname: rewritten.example, path: {kind: REPLACE_PREFIX_MATCH, value: /new}}},
            {requestMirror: {backend: {hostname: ratings.demo.svc.cluster.local, namespace: demo, port: 9080},
             percent: 50}}]
  backends: [{hostname: missing.demo.svc.cluster.local, namespace: demo, port: 80, weight: 1}]
  cors: {allowOrigins: [{type: EXACT, value: "https://a.example"}], allowMethods: [GET, POST],
         allowHeaders: [x-user], maxAgeS: 60, allowCredentials: true}
- name: demo/httproute/reviews/4
  kind: HTTP
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}]
  matches: [{path: {type: PATH_PREFIX, value: /fault}}]
  fault: {abort: {httpStatus: 418, percent: 100}}
  backends: [{hostname: reviews.demo.svc.cluster.local, namespace: demo, port: 9080, weight: 1, subset: v1}]
- name: demo/grpcroute/reviews/0
  kind: GRPC
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo, port: 9090}]
  matches: [{grpcService: demo.Reviews, grpcMethod: Get, grpcType: EXACT}]
  backends: [{hostname: reviews.demo.svc.cluster.local, namespace: demo, port: 9090, weight: 1}]
backendPolicies:
- hostname: reviews.demo.svc.cluster.local
  policy: {loadBalancer: {kind: CONSISTENT_HASH, consistentHash: {headerName: x-user}},
           connectionPool: {http1MaxPendingRequests: 10}, outlierDetection: {consecutive5xxErrors: 5}}
  subsets: [{name: v1, labels: {version: v1}, workloads: {uids: [reviews-v1]}}]
rateLimits:
- {name: per-user, namespace: demo, targets: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}],
   limits: [{key: HEADER, header: x-user, requests: 1000, intervalMs: 1000, burst: 1000}]}
requestAuthentications:
- {name: jwt, namespace: demo, targets: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}],
   jwtRules: [{issuer: "https://issuer.example", audiences: [reviews], jwksUri: "https://issuer.example/jwks",
               fromHeaders: [{name: x-jwt, prefix: "Bearer "}], fromParams: [token]}]}
authorizationPolicies:
- {name: deny-admin, namespace: demo, targets: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}],
   action: DENY, rules: [{to: [{paths: ["/admin*"], methods: [DELETE]}]}]}
- {name: allow-some, namespace: demo, targets: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, namespace: demo}],
   action: ALLOW, rules: [{from: [{namespaces: [demo], notPrincipals: ["*/sa/evil"]}], to: [{hosts: ["*"], ports: ["9080"]}]},
                          {when: [{key: "request.headers[x-user]", values: [jason, "*"]}]}]}
"#;

/// Who this waypoint is (the `waypoint` Gateway in `demo`).
pub fn self_info() -> SelfInfo {
    SelfInfo {
        gateway: ("demo".into(), "waypoint".into()),
        service_hostname: "waypoint.demo.svc.cluster.local".into(),
        ip: Some(IpAddr::from([10, 244, 1, 9])),
    }
}

/// The resources of [`MESH_YAML`].
pub fn mesh_resources() -> Vec<(String, Resource)> {
    match ambit_waypoint::localconfig::parse(Path::new("mesh.yaml"), MESH_YAML) {
        Ok(r) => r,
        Err(e) => panic!("the fuzz mesh does not parse: {e}"),
    }
}

/// Input: records (see `records`); the first byte of each picks the type (`% 8`: 0–6 one of
/// `TYPE_URLS`, 7 removes the resource whose index is the next byte), the rest is the encoded resource. Each
/// record is applied as one xDS response on top of the fuzz mesh.
pub fn waypoint_xds(data: &[u8]) {
    let me = self_info();
    let store = Store::new(self_info());
    store.update(mesh_resources(), vec![]);
    for (i, rec) in records(data).into_iter().enumerate() {
        let Some((&kind, body)) = rec.split_first() else {
            continue;
        };
        let kind = usize::from(kind % 8);
        if kind == 7 {
            let which = body.first().copied().unwrap_or(0);
            let name = format!("demo/r{which}");
            let removes = TYPE_URLS.iter().map(|u| store_key(u, &name)).collect();
            store.update(vec![], removes);
            continue;
        }
        let url = TYPE_URLS[kind];
        let name = format!("demo/r{i}");
        if let Ok(r) = decode_resource(url, &name, body) {
            store.update(vec![(store_key(url, &name), r)], vec![]);
        }
    }
    let snap = store.load();
    let dump = snap.dump(&me);
    assert!(serde_json::to_string(&dump).is_ok());
    for host in [
        "reviews.demo.svc.cluster.local",
        "ratings.demo.svc.cluster.local",
    ] {
        for port in [80, 9080, 9090] {
            let _ = snap.http_routes(host, port);
            let _ = snap.tcp_route(host, port);
            let _ = snap.backend(host, port, None);
            let _ = snap.backend(host, port, Some("v1"));
        }
        let _ = snap.policy(host);
    }
}
