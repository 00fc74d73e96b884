//! Integration tests over real TCP WebSockets and HTTP, one binary so the
//! crate links once. Each module owns one area of the contract.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

mod api;
mod auth;
mod auth_keys;
mod backend_support;
mod cli;
mod cluster;
mod cluster_faults;
mod cluster_probe;
mod cluster_routing;
mod cluster_support;
mod drain_without_redis;
mod edge;
mod fd_limit;
mod history;
mod http_limits;
mod isolation;
mod limits;
mod metrics_endpoints;
mod nginx_support;
mod ops;
mod pubsub;
mod redis_cluster;
mod redis_cluster_failover;
mod redis_cluster_support;
mod redis_support;
mod registry_faults;
mod rolling_restart;
mod session;
mod slow_consumer;
mod stream_support;
mod support;
mod tls;
