//! Unit tests of verification over a pre-loaded resolver cache.
