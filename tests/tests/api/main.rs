//! End-to-end tests: the real `silo` binary, HTTP on a random port, a temporary data dir.
//! One binary, many modules, so the harness compiles once.

// The harness is a private module of this one binary; `pub` marks its API.
#![allow(unreachable_pub)]

mod helpers;

mod api_keys;
mod at_rest;
mod audit;
mod connections;
mod credential_cache;
mod deletion;
mod edge;
mod export;
mod input;
mod isolation;
mod libsql_clients;
mod lockout;
mod operators;
mod provisioning;
mod quotas;
mod roles;
mod sandbox;
mod sessions;
mod signup_policy;
mod tls;
mod tokens;
mod two_factor;
mod websocket;
