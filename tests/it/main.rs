//! End-to-end tests over real sockets: one binary, so the crate and its dependencies link once.

mod support;

mod delivery;
mod deploy;
mod end_to_end;
mod fixtures;
mod forward;
mod ingress;
mod payload;
mod process;
mod scale_out;
mod signatures;
mod smtp_session;
mod threading;
mod tidy;
mod verification;
