//! End-to-end tests over real sockets: one binary, so the crate and its dependencies link once.

mod support;

mod delivery;
mod end_to_end;
mod fixtures;
mod hostile_smtp;
mod process;
mod s3_storage;
mod smtp_session;
mod starttls;
mod tidy;
