//! End-to-end tests over real sockets: one binary, so the crate and its dependencies link once.

mod support;

mod api;
mod delivery;
mod deploy;
mod end_to_end;
mod fixtures;
mod forward;
mod hostile_smtp;
mod ingress;
mod migrations;
mod payload;
mod process;
mod readme_promises;
mod readme_tour;
mod rules;
mod s3_storage;
mod scale_out;
mod signatures;
mod smtp_session;
mod starttls;
mod threading;
mod tidy;
mod ui;
mod verification;
