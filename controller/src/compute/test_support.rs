//! For the compute tests: a whole computation from manifest text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;

use crate::compute::{self, ComputeConfig, Resources};
use crate::index::Index;
use crate::sources::{Document, Event, parse_document};

/// The resources computed from the YAML documents of `text` (every one must parse) with `cfg`.
pub fn compute_text(text: &str, cfg: &ComputeConfig) -> Resources {
    let mut idx = Index::default();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if let Document::Object(o) = parse_document(v).unwrap() {
            idx.apply(Event::Apply(o));
        }
    }
    compute::compute(&idx, cfg)
}
