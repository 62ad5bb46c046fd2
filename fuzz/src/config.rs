//! Configuration text from files and the API: ztunnel's and the waypoint's local config YAML, and the
//! controller's manifests.

use std::path::Path;

use ambit_controller::sources::{Document, document_key, parse_document};
use ambit_waypoint::state::Store;
use ambit_ztunnel::state::ProxyState;
use serde::Deserialize;

use crate::waypoint::self_info;

/// Input: a ztunnel local config (`LOCAL_XDS` / `LOCAL_XDS_PATH`) as YAML.
pub fn ztunnel_localconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ambit_ztunnel::localconfig::parse(text) else {
        return;
    };
    // What was accepted serializes back to YAML that parses to the same config.
    let printed = serde_yaml::to_string(&cfg)
        .unwrap_or_else(|e| panic!("an accepted local config does not serialize: {e}"));
    match ambit_ztunnel::localconfig::parse(&printed) {
        Ok(again) => assert_eq!(cfg, again, "local config changed through {printed}"),
        Err(e) => {
            panic!("accepted local config prints as YAML that does not parse: {e}\n{printed}")
        }
    }
    let state = ProxyState::new();
    state.replace_all(cfg.clone());
    let once = state.snapshot_for_dump();
    state.replace_all(cfg);
    assert_eq!(
        state.snapshot_for_dump(),
        once,
        "re-applying the same file changed the state"
    );
}

/// Input: a waypoint local config (`LOCAL_XDS_PATH`) as YAML.
pub fn waypoint_localconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = ambit_waypoint::localconfig::parse(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let store = Store::new(self_info());
    store.replace_all(resources);
    let dump = store.load().dump(&self_info());
    assert!(serde_json::to_string(&dump).is_ok());
}

/// Input: a multi-document manifest file, as the controller's manifest directory source reads it.
pub fn controller_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut values = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        match serde_yaml::Value::deserialize(de) {
            Ok(v) => values.push(v),
            // The source keeps the file's last good state; nothing more to parse.
            Err(_) => return,
        }
    }
    for value in values {
        let key = document_key(&value);
        if let Ok(Document::Object(obj)) = parse_document(value) {
            // The key the source files a failing document under is the key of the object when it parses.
            assert_eq!(
                key,
                Some(obj.key()),
                "document_key disagrees with the parsed object"
            );
        }
    }
}
