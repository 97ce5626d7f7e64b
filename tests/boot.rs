//! The boot path end to end (written next).
#![allow(clippy::unwrap_used)]

mod common;
