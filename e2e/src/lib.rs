//! Network-namespace harness for Ambit end-to-end tests.
