//! The gRPC check (`envoyExtAuthzGrpc`): Envoy's `envoy.service.auth.v3.Authorization/Check`, one unary call over
//! the provider's pooled HTTP/2 connection (a 5-byte length-prefixed, uncompressed protobuf message each way).
//!
//! The answer is read as Envoy reads it: a `CheckResponse` whose `status.code` is 0 (or unset) allows, and its
//! `ok_response` edits the request; `error_response` is a provider failure; any other code denies, with the
//! `denied_response`'s status (403 when unset), headers and body. A header option's `append: true` appends to the
//! request header (comma-joined) or adds a response header, `append: false` overwrites; with `append` unset,
//! `append_action` `ADD_IF_ABSENT` and `OVERWRITE_IF_EXISTS` are honoured and anything else overwrites (the
//! default `APPEND_IF_EXISTS_OR_ADD` cannot be told from unset, and Envoy's gRPC client overwrote there until it
//! learned `append_action` in envoyproxy/envoy#42878, early 2026).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use ambit_proto::envoy::config::core::v3::{
    Address, HeaderValueOption, SocketAddress, address, socket_address,
};
use ambit_proto::ext_authz::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use ambit_proto::ext_authz::check_response::HttpResponse;
use ambit_proto::ext_authz::{AttributeContext, CheckRequest, CheckResponse};
use ambit_proto::waypoint::ExtAuthzProvider;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tracing::debug;

use super::{AskError, CheckInput, EditAction, HeaderEdits, MAX_ANSWER, Verdict, is_hop_by_hop};
use crate::http::Proxy;
use crate::http::body::RespBody;
use crate::state::Picked;
use crate::upstream::ReqBody;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

pub(super) async fn ask(
    proxy: &Arc<Proxy>,
    picked: &Picked,
    provider: &ExtAuthzProvider,
    input: &CheckInput<'_>,
    timeout: Duration,
) -> Result<Verdict, AskError> {
    let me = proxy.cfg.identity().to_string();
    let msg = check_request(provider, input, &me).encode_to_vec();
    let mut frame = BytesMut::with_capacity(PREFIX + msg.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    frame.put_slice(&msg);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "http://{}:{}{CHECK_PATH}",
            provider.service, provider.port
        ))
        .version(Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(
            "grpc-timeout",
            format!("{}m", timeout.as_millis().min(99_999_999)),
        )
        .body(RespBody::full(frame.freeze()) as ReqBody)?;
    let (resp, _) = proxy
        .upstream
        .send(&picked.workload, picked.addr, true, req, None)
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(AskError::HttpStatus(resp.status()));
    }
    let (parts, body) = resp.into_parts();
    let collected = Limited::new(body, PREFIX + MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| AskError::Body(e.to_string()))?;
    // A trailers-only answer (an error without a message) carries its status in the headers.
    let trailers = collected.trailers().cloned();
    grpc_status(trailers.as_ref().unwrap_or(&parts.headers))?;
    verdict(decode(&collected.to_bytes())?)
}

/// What the provider is told: the client, the destination and the request (its headers as Envoy sends them:
/// lower-case names, repeated values joined with `,`, the pseudo-headers included).
fn check_request(
    provider: &ExtAuthzProvider,
    input: &CheckInput<'_>,
    destination_principal: &str,
) -> CheckRequest {
    let include = &provider.include_request_headers_in_check;
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in input.headers {
        let wanted = include.is_empty()
            || include
                .iter()
                .any(|w| w.eq_ignore_ascii_case(name.as_str()));
        if !wanted || is_hop_by_hop(name) || name == header::HOST {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    for (name, value) in [
        (":authority", input.authority),
        (":method", input.method.as_str()),
        (":path", input.path),
        (":scheme", "http"),
    ] {
        headers.insert(name.to_owned(), value.to_owned());
    }
    let id = input
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let size = input
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(-1);
    let protocol = match input.version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "",
    };
    let http = HttpRequest {
        id: id.to_owned(),
        method: input.method.as_str().to_owned(),
        headers,
        path: input.path.to_owned(),
        host: input.authority.to_owned(),
        scheme: "http".to_owned(),
        size,
        protocol: protocol.to_owned(),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(
                input.source_addr,
                input.source_principal.unwrap_or(""),
            )),
            destination: Some(peer(input.destination_addr, destination_principal)),
            request: Some(AttrRequest { http: Some(http) }),
        }),
    }
}

fn peer(addr: Option<SocketAddr>, principal: &str) -> Peer {
    Peer {
        address: addr.map(|a| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    a.port(),
                ))),
            })),
        }),
        principal: principal.to_owned(),
    }
}

/// The call's own outcome: `grpc-status` 0, or why not.
fn grpc_status(h: &HeaderMap) -> Result<(), AskError> {
    let code = h
        .get("grpc-status")
        .ok_or_else(|| AskError::Malformed("no grpc-status".into()))?;
    let code: i32 = code
        .to_str()
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| AskError::Malformed(format!("grpc-status {code:?}")))?;
    if code == 0 {
        return Ok(());
    }
    let message = h
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(AskError::Grpc { code, message })
}

/// The one message of a unary answer.
fn decode(body: &Bytes) -> Result<CheckResponse, AskError> {
    let Some((head, rest)) = body.split_at_checked(PREFIX) else {
        return Err(AskError::Malformed("no message".into()));
    };
    if head[0] != 0 {
        return Err(AskError::Malformed("compressed message".into()));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let msg = rest
        .get(..len)
        .ok_or_else(|| AskError::Malformed("truncated message".into()))?;
    CheckResponse::decode(msg).map_err(|e| AskError::Malformed(e.to_string()))
}

fn verdict(answer: CheckResponse) -> Result<Verdict, AskError> {
    let status = answer.status.unwrap_or_default();
    match answer.http_response {
        _ if status.code == 0 => {
            let mut edits = HeaderEdits::default();
            if let Some(HttpResponse::OkResponse(ok)) = answer.http_response {
                edits.edits = header_edits(ok.headers, false);
                edits.remove = ok
                    .headers_to_remove
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .filter(|n| *n != header::HOST)
                    .collect();
            }
            Ok(Verdict::Allow(edits))
        }
        Some(HttpResponse::ErrorResponse(_)) => Err(AskError::Grpc {
            code: status.code,
            message: format!("error_response: {}", status.message),
        }),
        other => {
            let denied = match other {
                Some(HttpResponse::DeniedResponse(d)) => d,
                _ => Default::default(),
            };
            let code = denied
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            let has_body = !denied.body.is_empty();
            let mut resp = Response::new(RespBody::new(RespBody::full(denied.body), None, None));
            *resp.status_mut() = code;
            HeaderEdits {
                edits: header_edits(denied.headers, true),
                remove: Vec::new(),
            }
            .apply(resp.headers_mut());
            if has_body && !resp.headers().contains_key(header::CONTENT_TYPE) {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            Ok(Verdict::Deny(Box::new(resp)))
        }
    }
}

/// A provider's header options as edits (`to_client`: for the client's answer, where `append: true` adds a
/// header line rather than joining values). Invalid names or values are skipped.
fn header_edits(
    options: Vec<HeaderValueOption>,
    to_client: bool,
) -> Vec<(HeaderName, HeaderValue, EditAction)> {
    let mut out = Vec::with_capacity(options.len());
    for o in options {
        let Some(h) = o.header else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.key.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) else {
            debug!(header = %h.key, "ext_authz answer: invalid header skipped");
            continue;
        };
        let action = match o.append {
            Some(true) if to_client => EditAction::Add,
            Some(true) => EditAction::Append,
            Some(false) => EditAction::Overwrite,
            None => match HeaderAppendAction::try_from(o.append_action) {
                Ok(HeaderAppendAction::AddIfAbsent) => EditAction::AddIfAbsent,
                Ok(HeaderAppendAction::OverwriteIfExists) => EditAction::OverwriteIfExists,
                _ => EditAction::Overwrite,
            },
        };
        out.push((name, value, action));
    }
    out
}

#[cfg(test)]
mod tests;
