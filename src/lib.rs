//! mxhook: an inbound email-to-webhook gateway.
//!
//! ```text
//! TCP :25 ─► smtp::serve ─► smtp::session (mailin engine + proto) ─(Envelope, raw)─► intake::accept
//!              permits         RCPT: directory lookup (550, never relay)         parse → store
//!                              ◄── 250 only after store + commit ◄──────────────  → event → db commit
//!                                                                                      │
//! deliver::Dispatcher ─ claims jobs (leases) ─► webhook (signed POST, retries, dead-letter)
//! HTTP :8080 ─► http::router ─► api (by resource) ─► db (messages, deliveries, attempts), store
//!               ├─ /ui: the dashboard (HTML; a client of the API's handlers)
//!               └─ provider webhooks ─► ingress (verify → inbox → replay → intake)
//! ```
//!
//! Modules in pipeline order: [`config`], [`model`], [`smtp`], [`directory`], [`ratelimit`],
//! [`intake`], [`parse`], [`verify`], [`spam`], [`thread`], [`prompt`], [`event`], [`route`], [`store`],
//! [`db`] (its stored secrets sealed by [`secrets`]), [`signature`], [`deliver`], [`reply`], [`ingress`], [`http`], [`app`] (which mounts
//! [`http::router`] on the one HTTP listener). No two of them import each other in a loop, and
//! nothing but `app` imports `http`.

pub mod app;
pub mod config;
pub mod counters;
pub mod db;
pub mod deliver;
pub mod directory;
pub mod event;
pub mod first_run;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingress;
pub mod intake;
pub mod model;
pub mod notify;
pub mod parse;
pub mod prompt;
pub mod ratelimit;
pub mod reply;
pub mod retention;
pub mod route;
pub mod secrets;
pub mod signature;
pub mod smtp;
pub mod spam;
pub mod store;
pub mod thread;
pub mod verify;
