//! The HTTP check (`envoyExtAuthzHttp`): the request itself, re-aimed at the provider.

use std::sync::Arc;

use ambit_proto::waypoint::ExtAuthzProvider;
use http::{HeaderName, Request, Response, header};
use http_body_util::{BodyExt, Limited};

use super::{AskError, CheckInput, EditAction, HeaderEdits, MAX_ANSWER, Verdict, is_hop_by_hop};
use crate::http::Proxy;
use crate::http::body::RespBody;
use crate::state::Picked;
use crate::upstream::ReqBody;

pub(super) async fn ask(
    proxy: &Arc<Proxy>,
    picked: &Picked,
    provider: &ExtAuthzProvider,
    input: &CheckInput<'_>,
) -> Result<Verdict, AskError> {
    let mut req = Request::builder()
        .method(input.method.clone())
        .uri(format!("{}{}", provider.path_prefix, input.path))
        .body(RespBody::full(Vec::<u8>::new()) as ReqBody)?;
    let h = req.headers_mut();
    for (name, value) in input.headers {
        let wanted = provider.include_request_headers_in_check.is_empty()
            || name == header::HOST
            || provider
                .include_request_headers_in_check
                .iter()
                .any(|w| w.eq_ignore_ascii_case(name.as_str()));
        if wanted && !is_hop_by_hop(name) {
            h.append(name.clone(), value.clone());
        }
    }
    h.remove(header::CONTENT_LENGTH);
    let (resp, release) = proxy
        .upstream
        .send(&picked.workload, picked.addr, false, req, None)
        .await?;
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| AskError::Body(e.to_string()))?
        .to_bytes();
    if let Some(r) = release {
        r.release();
    }
    let copy = |names: &[String], action: EditAction| -> HeaderEdits {
        let edits = names
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .flat_map(|n| {
                resp_headers
                    .get_all(&n)
                    .iter()
                    .map(|v| (n.clone(), v.clone(), action))
                    .collect::<Vec<_>>()
            })
            .collect();
        HeaderEdits {
            edits,
            remove: Vec::new(),
        }
    };
    if status.is_success() {
        let edits = copy(
            &provider.headers_to_upstream_on_allow,
            EditAction::Overwrite,
        );
        return Ok(Verdict::Allow(edits));
    }
    let mut deny = Response::new(RespBody::new(RespBody::full(body), None, None));
    *deny.status_mut() = status;
    copy(&provider.headers_to_downstream_on_deny, EditAction::Add).apply(deny.headers_mut());
    Ok(Verdict::Deny(Box::new(deny)))
}
