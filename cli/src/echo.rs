//! `ambit echo`: the built-in test server.
