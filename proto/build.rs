//! Compiles the schemas in `proto/` with protox (pure Rust), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "xds.proto",
        "workload.proto",
        "authorization.proto",
        "ca.proto",
        "zds.proto",
        "waypoint.proto",
        "policy.proto",
        "google_rpc.proto",
        "envoy_type.proto",
        "envoy_core.proto",
        "ext_authz.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // Ambit's own waypoint schema also loads from YAML (a waypoint run by hand): serde with camelCase names,
    // enum fields by name (see `serde_enum` in lib.rs).
    let mut builder = tonic_prost_build::configure()
        .message_attribute(
            ".ambit.waypoint",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, rename_all = \"camelCase\")]",
        );
    for (field, with) in [
        (".ambit.waypoint.Route.kind", "route_kind"),
        (".ambit.waypoint.ParentRef.kind", "parent_kind"),
        (".ambit.waypoint.RouteMatch.grpc_type", "match_type"),
        (".ambit.waypoint.PathMatch.type", "match_type"),
        (".ambit.waypoint.HeaderMatch.type", "match_type"),
        (".ambit.waypoint.PathModifier.kind", "path_modifier_kind"),
        (".ambit.waypoint.Route.origin", "route_origin"),
        (".ambit.waypoint.StringMatch.type", "match_type"),
        (".ambit.waypoint.LoadBalancer.kind", "load_balancer_kind"),
        (".ambit.waypoint.ConsistentHash.algorithm", "hash_algorithm"),
        (".ambit.waypoint.PolicyTarget.kind", "policy_target_kind"),
        (".ambit.waypoint.AuthorizationPolicy.action", "authz_action"),
        (".ambit.waypoint.RateLimit.key", "rate_limit_key"),
    ] {
        builder = builder.field_attribute(
            field,
            format!("#[serde(with = \"crate::serde_enum::{with}\")]"),
        );
    }
    builder
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
