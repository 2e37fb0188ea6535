//! Nothing here (Cargo wants a library or binary target): the
//! compatibility test is `tests/against_paxlog.rs`.
