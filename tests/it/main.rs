//! End-to-end tests over real sockets: one binary, so the crate and its dependencies link once.

mod support;

mod api;
mod cli;
mod delivery;
mod delivery_promises;
mod deploy;
mod end_to_end;
mod first_run;
mod fixtures;
mod forward;
mod group_commit;
mod hostile_smtp;
mod inbox_webhook_settings;
mod ingress;
mod migrations;
mod openapi;
mod payload;
mod payload_shapes;
mod process;
mod readme_promises;
mod readme_tour;
mod recover;
mod rules;
mod s3_storage;
mod scale_out;
mod send_to;
mod signatures;
mod smtp_session;
mod starttls;
mod subscriptions;
mod threading;
mod tidy;
mod ui;
mod ui_endpoint_settings;
mod verification;
