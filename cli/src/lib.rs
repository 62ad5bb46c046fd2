//! The ambit CLI: `ambit local …` runs the whole mesh on one host; `ambit echo` is the built-in test server;
//! `ambit authz check` explains a policy decision; `ambit ztunnel-config` (`zc`) shows a ztunnel's view of the mesh.

pub mod authz;
pub mod echo;
pub mod local;
pub mod zc;
