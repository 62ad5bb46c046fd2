//! Integration tests of the API server: kube-rs (the controller's and node agents' client) and the real
//! `kubectl`, against servers started in-process on 127.0.0.1:0. One test binary, so that kube-rs and
//! k8s-openapi are compiled into it once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kube_client;
mod kubectl;
mod lifecycle;
