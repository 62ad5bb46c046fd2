//! Ambit node agent.
