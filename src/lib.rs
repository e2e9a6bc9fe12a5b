//! mxhook: an inbound email-to-webhook gateway.
//!
//! ```text
//! TCP :25 ─► smtp::serve ─► smtp::session (mailin engine + proto) ─(Envelope, raw)─► intake::accept
//!              permits         RCPT: directory lookup (550, never relay)         parse → store
//!                              ◄── 250 only after store + commit ◄──────────────  → event → db commit
//!                                                                                      │
//! deliver::Dispatcher ─ claims jobs (leases) ─► webhook (signed POST, retries, dead-letter)
//! HTTP :8080 ─► api::router ─► db (messages, deliveries, attempts), store (raw .eml)
//!               └─ /ui: ui::router (HTML dashboard; same handlers and db functions as /v1)
//! ```
//!
//! Modules in pipeline order: [`config`], [`model`], [`smtp`], [`directory`], [`ratelimit`],
//! [`intake`], [`parse`], [`verify`], [`thread`], [`prompt`], [`event`], [`route`], [`store`],
//! [`db`], [`signature`], [`deliver`], [`ingress`], [`api`], [`ui`], [`app`] (which mounts
//! `api`, `ui` and `ingress` on one listener). No two of them import each other in a loop.

pub mod api;
pub mod app;
pub mod config;
pub mod counters;
pub mod db;
pub mod deliver;
pub mod directory;
pub mod event;
pub mod ingress;
pub mod intake;
pub mod model;
pub mod parse;
pub mod prompt;
pub mod ratelimit;
pub mod route;
pub mod signature;
pub mod smtp;
pub mod store;
pub mod thread;
pub mod ui;
pub mod verify;
