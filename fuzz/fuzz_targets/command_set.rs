#![no_main]
//! See `fuzz/src/entry.rs` and docs/fuzzing.md.

#[path = "../src/entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::command_set(data));
