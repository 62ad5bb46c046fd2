//! Ambit ztunnel: the per-node L4 proxy.
