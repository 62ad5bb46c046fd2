//! Ambit controller: manifests in, xDS and certificates out.
