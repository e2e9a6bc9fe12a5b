//! End-to-end tests over real sockets: one binary, so the crate and its dependencies link once.

mod support;

mod api;
mod delivery;
mod end_to_end;
mod fixtures;
mod process;
mod smtp_session;
mod tidy;
