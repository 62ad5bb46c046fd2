//! The verbs on resource paths: get, list, watch, create, update, patch (merge, JSON, strategic, apply),
//! delete and deletecollection, the `status` subresource, TokenReview and the service-account `token`
//! subresource.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};

use super::{Body, Query, State, error_response, full, json_response};
use crate::error::{ApiError, success_status};
use crate::managed;
use crate::meta;
use crate::patch::{self, PatchType};
use crate::resources::{Registry, ResourceType, TypeKey, at_version};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{DeleteOptions, Deleted, Inner, Propagation, Subresource, WriteCtx};
use crate::table;
use crate::token;
use crate::watch;

/// The object or collection a request addresses.
struct Target {
    rt: ResourceType,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn no_resource() -> ApiError {
    ApiError::NotFound {
        message: "the server could not find the requested resource".into(),
        details: Default::default(),
    }
}

fn resolve(reg: &Registry, group: &str, version: &str, segs: &[&str]) -> Result<Target, ApiError> {
    let namespaced_path = segs.len() >= 3
        && segs[0] == "namespaces"
        && reg
            .lookup(group, version, segs[2])
            .is_some_and(|t| t.namespaced);
    let (namespace, rest) = if namespaced_path {
        (Some(segs[1].to_owned()), &segs[2..])
    } else {
        (None, segs)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return Err(no_resource()),
    };
    let rt = reg
        .lookup(group, version, plural)
        .ok_or_else(no_resource)?
        .clone();
    if (rt.namespaced && name.is_some() && namespace.is_none())
        || (!rt.namespaced && namespace.is_some())
    {
        return Err(no_resource());
    }
    Ok(Target {
        rt,
        version: version.to_owned(),
        namespace,
        name,
        sub,
    })
}

fn parse_body(body: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    if yaml {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON: {e}")))
    }
}

fn field_manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn selectors(query: &Query) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn resource(
    state: &Arc<State>,
    method: &Method,
    group: &str,
    version: &str,
    segs: &[&str],
    query: &Query,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> Response<Body> {
    let target = {
        let inner = state.store.lock();
        resolve(&inner.registry, group, version, segs)
    };
    let t = match target {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    // kubectl >= 1.32 sends protobuf from its `create` generators: decode the kinds it sends that way.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if !body.is_empty() && ct.starts_with("application/vnd.kubernetes.protobuf") {
        match crate::protobuf::decode(&body)
            .and_then(|v| serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string())))
        {
            Ok(json) => Bytes::from(json),
            Err(e) => return error_response(&e),
        }
    } else {
        body
    };
    if t.rt.create_only && method != Method::POST {
        return error_response(&ApiError::MethodNotAllowed(format!(
            "{} can only be created",
            t.rt.plural
        )));
    }
    let result = match (method.clone(), t.name.is_some(), t.sub.as_deref()) {
        (Method::GET, false, None) if query.flag("watch") => {
            return watch(state, &t, query, accept);
        }
        (Method::GET, false, None) => list(state, &t, query, accept),
        (Method::GET, true, None | Some("status")) => get(state, &t, accept, query),
        (Method::POST, false, None) if t.rt.plural == "tokenreviews" => token_review(state, &body),
        (Method::POST, false, None) => create(state, &t, query, headers, &body),
        (Method::POST, true, Some("token"))
            if t.rt.key() == TypeKey::new("", "serviceaccounts") =>
        {
            token_request(state, &t, &body)
        }
        (Method::PUT, true, None | Some("status")) => update(state, &t, query, headers, &body),
        (Method::PATCH, true, None | Some("status")) => patch(state, &t, query, headers, &body),
        (Method::DELETE, true, None) => delete(state, &t, query, &body),
        (Method::DELETE, false, None) => delete_collection(state, &t, query, &body),
        (_, _, Some(s)) if !matches!(s, "status" | "token") => Err(no_resource()),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{method} is not supported on {}",
            t.rt.key().id()
        ))),
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn sub_of(t: &Target) -> Subresource {
    if t.sub.as_deref() == Some("status") {
        Subresource::Status
    } else {
        Subresource::Main
    }
}

fn ns_of(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or("")
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or("")
}

fn render_one(t: &Target, obj: &Value, accept: &str, query: &Query, rv: &str) -> Response<Body> {
    let obj = at_version(obj, &t.rt, &t.version);
    if table::wants_table(accept) {
        let tbl = table::render(
            &t.rt,
            &[obj.into_owned()],
            query.get("includeObject").unwrap_or("Metadata"),
            rv,
        );
        return full(
            StatusCode::OK,
            table::content_type(accept),
            serde_json::to_vec(&tbl).unwrap_or_default(),
        );
    }
    json_response(StatusCode::OK, &obj)
}

fn get(state: &State, t: &Target, accept: &str, query: &Query) -> Result<Response<Body>, ApiError> {
    let inner = state.store.lock();
    let obj = inner.get(&t.rt, ns_of(t), name_of(t))?;
    Ok(render_one(
        t,
        &obj,
        accept,
        query,
        meta::resource_version(&obj),
    ))
}

/// Continue tokens: the list's version and the last `(namespace, name)` returned.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    B64.encode(json!({"rv": rv, "ns": ns, "name": name}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad =
        || ApiError::BadRequest("continue: invalid value: the continue token is malformed".into());
    let v: Value = B64
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(bad)?;
    Ok((
        v["rv"].as_u64().ok_or_else(bad)?,
        v["ns"].as_str().ok_or_else(bad)?.to_owned(),
        v["name"].as_str().ok_or_else(bad)?.to_owned(),
    ))
}

fn list(
    state: &State,
    t: &Target,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let sel = selectors(query)?;
    let limit = query.number("limit")?.filter(|l| *l > 0);
    let continue_from = query
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(decode_continue)
        .transpose()?;
    let inner = state.store.lock();
    let mut list_rv = inner.resource_version();
    let mut items = inner.list(&t.rt, t.namespace.as_deref(), &sel);
    if let Some((rv, ns, name)) = &continue_from {
        if *rv < inner.compacted() {
            return Err(ApiError::Expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new \
                 list without the continue parameter."
                    .into(),
            ));
        }
        // Later pages report the first page's version: a watch from it replays whatever changed in between.
        list_rv = *rv;
        let after = (ns.as_str(), name.as_str());
        items.retain(|o| (meta::namespace(o), meta::name(o)) > after);
    }
    let mut cont = String::new();
    let mut remaining = None;
    if let Some(limit) = limit
        && items.len() as u64 > limit
    {
        remaining = Some(items.len() as u64 - limit);
        items.truncate(limit as usize);
        if let Some(last) = items.last() {
            cont = encode_continue(list_rv, meta::namespace(last), meta::name(last));
        }
    }
    drop(inner);
    let items: Vec<Value> = items
        .iter()
        .map(|o| at_version(o, &t.rt, &t.version).into_owned())
        .collect();
    if table::wants_table(accept) {
        let mut tbl = table::render(
            &t.rt,
            &items,
            query.get("includeObject").unwrap_or("Metadata"),
            &list_rv.to_string(),
        );
        if !cont.is_empty() {
            tbl["metadata"]["continue"] = json!(cont);
        }
        return Ok(full(
            StatusCode::OK,
            table::content_type(accept),
            serde_json::to_vec(&tbl).unwrap_or_default(),
        ));
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if !cont.is_empty() {
        metadata["continue"] = json!(cont);
    }
    if let Some(r) = remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(&t.version),
                "metadata": metadata, "items": items}),
    ))
}

fn watch(state: &Arc<State>, t: &Target, query: &Query, accept: &str) -> Response<Body> {
    let sel = match selectors(query) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let timeout = match query.number("timeoutSeconds") {
        Ok(s) => Duration::from_secs(s.unwrap_or(1800).clamp(1, 24 * 3600)),
        Err(e) => return error_response(&e),
    };
    let as_table = table::wants_table(accept);
    let (rt, version) = (t.rt.clone(), t.version.clone());
    let include = query.get("includeObject").unwrap_or("Metadata").to_owned();
    let render: watch::Render = Arc::new(move |obj: &Value| {
        let obj = at_version(obj, &rt, &version).into_owned();
        if as_table {
            let rv = meta::resource_version(&obj).to_owned();
            table::render(&rt, &[obj], &include, &rv)
        } else {
            obj
        }
    });
    let req = watch::WatchRequest {
        rt: t.rt.clone(),
        api_version: t.rt.api_version(&t.version),
        namespace: t.namespace.clone(),
        selectors: sel,
        resource_version: query.get("resourceVersion").map(str::to_owned),
        send_initial_events: query.flag("sendInitialEvents"),
        allow_bookmarks: query.flag("allowWatchBookmarks"),
        timeout,
        render,
    };
    let rx = match watch::start(
        &state.store,
        req,
        state.bookmark_every,
        state.shutdown.clone(),
    ) {
        Ok(rx) => rx,
        Err(e) => return error_response(&e),
    };
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| {
            (
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
                rx,
            )
        })
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    let ct = if as_table {
        table::content_type(accept)
    } else {
        "application/json"
    };
    if let Ok(v) = header::HeaderValue::from_str(ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn write_ctx(query: &Query, headers: &HeaderMap) -> WriteCtx {
    let mut ctx = WriteCtx::new(&field_manager(query, headers));
    ctx.dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    ctx
}

fn created(t: &Target, obj: &Value) -> Response<Body> {
    json_response(StatusCode::CREATED, &at_version(obj, &t.rt, &t.version))
}

fn create(
    state: &State,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let obj = parse_body(body, false)?;
    let mut inner = state.store.lock();
    let obj = inner.create(&t.rt, ns_of(t), obj, &write_ctx(query, headers))?;
    Ok(created(t, &obj))
}

fn update(
    state: &State,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let obj = parse_body(body, false)?;
    let mut inner = state.store.lock();
    let obj = inner.update(
        &t.rt,
        ns_of(t),
        name_of(t),
        obj,
        sub_of(t),
        &write_ctx(query, headers),
    )?;
    Ok(json_response(
        StatusCode::OK,
        &at_version(&obj, &t.rt, &t.version),
    ))
}

fn patch(
    state: &State,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchType::from_content_type(ct).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"))
    })?;
    let body = parse_body(body, kind == PatchType::Apply)?;
    let mut ctx = write_ctx(query, headers);
    let sub = sub_of(t);
    let (ns, name) = (ns_of(t), name_of(t));
    let mut inner = state.store.lock();
    if kind == PatchType::Apply {
        return apply(&mut inner, t, query, &mut ctx, body);
    }
    let current = inner.get(&t.rt, ns, name)?;
    let mut new = (*current).clone();
    match kind {
        PatchType::Merge => patch::merge_patch(&mut new, &body),
        PatchType::Strategic => patch::strategic_merge_patch(&mut new, &body)?,
        PatchType::Json => patch::json_patch(&mut new, &body)?,
        PatchType::Apply => {}
    }
    if !new.is_object() {
        return Err(ApiError::BadRequest(
            "the patch turned the object into a non-object".into(),
        ));
    }
    // A patch carries a resourceVersion precondition only if it sets one.
    if body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && let Some(m) = meta::meta_mut(&mut new)
    {
        m.insert(
            "resourceVersion".into(),
            json!(meta::resource_version(&current)),
        );
    }
    let obj = inner.update(&t.rt, ns, name, new, sub, &ctx)?;
    Ok(json_response(
        StatusCode::OK,
        &at_version(&obj, &t.rt, &t.version),
    ))
}

fn apply(
    inner: &mut Inner,
    t: &Target,
    query: &Query,
    ctx: &mut WriteCtx,
    config: Value,
) -> Result<Response<Body>, ApiError> {
    if query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::BadRequest(
            "PATCH, application/apply-patch+yaml: fieldManager is required".into(),
        ));
    }
    let (ns, name) = (ns_of(t), name_of(t));
    let cfg_name = meta::name(&config);
    if !cfg_name.is_empty() && cfg_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({cfg_name}) does not match the name on the URL ({name})"
        )));
    }
    if config.get("apiVersion").is_none() || config.get("kind").is_none() {
        return Err(ApiError::BadRequest(
            "apiVersion and kind are required in an apply configuration".into(),
        ));
    }
    let force = query.flag("force");
    let sub = sub_of(t);
    let api_version = t.rt.api_version(&t.version);
    let current = match inner.get(&t.rt, ns, name) {
        Ok(c) => Some(c),
        Err(ApiError::NotFound { .. }) if sub == Subresource::Main => None,
        Err(e) => return Err(e),
    };
    let want_rv = meta::resource_version(&config).to_owned();
    let normalize = |v: &mut Value| inner.normalize(&t.rt, v, current.as_deref());
    let mut new = managed::apply(
        current.as_deref(),
        config,
        &ctx.manager,
        force,
        managed::Scope {
            sub,
            status_subresource: t.rt.status_subresource,
        },
        &api_version,
        &normalize,
    )?;
    ctx.applied = true;
    let Some(m) = meta::meta_mut(&mut new) else {
        return Err(ApiError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    };
    m.insert("name".into(), json!(name));
    match current {
        None => {
            let obj = inner.create(&t.rt, ns, new, ctx)?;
            Ok(created(t, &obj))
        }
        Some(cur) => {
            let rv = if want_rv.is_empty() {
                meta::resource_version(&cur).to_owned()
            } else {
                want_rv
            };
            m.insert("resourceVersion".into(), json!(rv));
            let obj = inner.update(&t.rt, ns, name, new, sub, ctx)?;
            Ok(json_response(
                StatusCode::OK,
                &at_version(&obj, &t.rt, &t.version),
            ))
        }
    }
}

fn delete_options(query: &Query, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(body, false)?
    };
    let propagation = match (
        b.get("propagationPolicy").and_then(Value::as_str),
        query.get("propagationPolicy"),
    ) {
        (Some(p), _) | (None, Some(p)) => Some(Propagation::parse(p)?),
        _ if b.get("orphanDependents") == Some(&json!(true))
            || query.get("orphanDependents") == Some("true") =>
        {
            Some(Propagation::Orphan)
        }
        _ => None,
    };
    let dry_run = b
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|x| x == "All"))
        || query.get("dryRun") == Some("All");
    Ok(DeleteOptions {
        propagation,
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
    })
}

fn delete(
    state: &State,
    t: &Target,
    query: &Query,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let opts = delete_options(query, body)?;
    let mut inner = state.store.lock();
    match inner.delete(&t.rt, ns_of(t), name_of(t), &opts)? {
        Deleted::Gone(obj) => Ok(json_response(
            StatusCode::OK,
            &success_status(meta::name(&obj), &t.rt.group, &t.rt.plural, meta::uid(&obj)),
        )),
        Deleted::Pending(obj) => Ok(json_response(
            StatusCode::OK,
            &at_version(&obj, &t.rt, &t.version),
        )),
    }
}

fn delete_collection(
    state: &State,
    t: &Target,
    query: &Query,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let opts = delete_options(query, body)?;
    let sel = selectors(query)?;
    let mut inner = state.store.lock();
    let objs = inner.list(&t.rt, t.namespace.as_deref(), &sel);
    for o in &objs {
        match inner.delete(&t.rt, meta::namespace(o), meta::name(o), &opts) {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

fn token_review(state: &State, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let req = parse_body(body, false)?;
    if req
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::invalid(
            "TokenReview",
            "authentication.k8s.io",
            "",
            "spec.token: Required value",
        ));
    }
    let inner = state.store.lock();
    let review = token::review(
        &state.signer,
        &state.admin_token,
        &req,
        &inner,
        token::unix_now(),
    );
    Ok(json_response(StatusCode::CREATED, &review))
}

/// `POST .../serviceaccounts/<sa>/token`: a bound token, as `kubectl create token` or a kubelet asks for.
fn token_request(state: &State, t: &Target, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let req = parse_body(body, false)?;
    if !req.is_object() {
        return Err(ApiError::BadRequest(
            "a TokenRequest must be a JSON object".into(),
        ));
    }
    let (ns, sa_name) = (ns_of(t), name_of(t));
    let inner = state.store.lock();
    let sa = inner.get(&t.rt, ns, sa_name)?;
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![token::ISSUER.to_owned()]);
    let ttl = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600)
        .max(600);
    let mut pt = token::PodToken {
        namespace: ns.to_owned(),
        service_account: sa_name.to_owned(),
        service_account_uid: meta::uid(&sa).to_owned(),
        audiences,
        ttl_seconds: ttl,
        ..Default::default()
    };
    if let Some(bound) = req.pointer("/spec/boundObjectRef") {
        if bound.get("kind").and_then(Value::as_str) != Some("Pod") {
            return Err(ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                sa_name,
                "spec.boundObjectRef.kind: only Pod is supported",
            ));
        }
        let pod_name = bound.get("name").and_then(Value::as_str).unwrap_or("");
        let pod = inner
            .find(&TypeKey::pods(), ns, pod_name)
            .ok_or_else(|| ApiError::not_found("", "pods", pod_name))?;
        if let Some(uid) = bound.get("uid").and_then(Value::as_str)
            && uid != meta::uid(pod)
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                pod_name,
                "the UID in the bound object reference does not match",
            ));
        }
        pt.pod_name = pod_name.to_owned();
        pt.pod_uid = meta::uid(pod).to_owned();
        pt.node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_owned);
        pt.node_uid = pt
            .node_name
            .as_deref()
            .and_then(|n| inner.find(&TypeKey::new("", "nodes"), "", n))
            .map(|n| meta::uid(n).to_owned());
    }
    let now = token::unix_now();
    let jwt = state
        .signer
        .mint(&pt, now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let exp = time::OffsetDateTime::from_unix_timestamp(now + ttl)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut out = req.clone();
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"] =
        json!({"name": sa_name, "namespace": ns, "creationTimestamp": meta::now_rfc3339()});
    out["status"] = json!({"token": jwt, "expirationTimestamp": exp});
    Ok(json_response(StatusCode::CREATED, &out))
}
