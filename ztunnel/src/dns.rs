//! The DNS proxy on 15053 (spec 7).
