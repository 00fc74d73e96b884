//! The in-process bus of a single node: zero setup, same protocol.
//!
//! There are no other nodes, so publishing beyond the hub only has to
//! number and keep what rooms with history keep (`history`) and remember
//! idempotency keys (`idempotency`); presence and counts are the hub's.
//! Connection limits were already enforced atomically by the hub when it
//! admitted the connection.

mod history;
mod idempotency;

use std::sync::Arc;

use async_trait::async_trait;
use fanout_protocol::api::{ClusterStats, Counts};
use fanout_protocol::{Name, PresenceMember};

use self::history::Streams;
use self::idempotency::Keys;
use super::{
    AdmitError, Bus, BusError, HistoryPage, HistoryQuery, NotReady, PublishOptions, Published,
    StreamSpec,
};
use crate::hub::{ConnHandle, ConnLimits, Hub, Joined, Left};
use crate::message::{Audience, Broadcast};

/// Memory bounds of the embedded bus (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedLimits {
    /// `limits.history_memory_bytes`.
    pub history_memory_bytes: usize,
    /// `limits.idempotency_keys`.
    pub idempotency_keys: usize,
}

impl Default for EmbeddedLimits {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        Self {
            history_memory_bytes: l.history_memory_bytes,
            idempotency_keys: l.idempotency_keys,
        }
    }
}

/// The bus of a node without Redis.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    /// Presence and counts are read from it.
    hub: Hub,
    /// Room streams (history), shared by every clone.
    streams: Arc<Streams>,
    /// Accepted idempotency keys, shared by every clone.
    keys: Arc<Keys>,
}

impl EmbeddedBus {
    /// A bus that answers from `hub`.
    pub fn new(hub: Hub, limits: EmbeddedLimits) -> Self {
        Self {
            hub,
            streams: Arc::new(Streams::new(limits.history_memory_bytes)),
            keys: Arc::new(Keys::new(limits.idempotency_keys)),
        }
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn readiness(&self) -> Result<(), NotReady> {
        Ok(())
    }

    async fn register(&self, _conn: &ConnHandle, _limits: ConnLimits) -> Result<(), AdmitError> {
        Ok(())
    }

    async fn unregister(&self, _conn: &ConnHandle) {}

    async fn joined(
        &self,
        _conn: &ConnHandle,
        _room: &Name,
        local: Joined,
    ) -> Result<bool, BusError> {
        Ok(local.first_of_user)
    }

    async fn left(&self, _conn: &ConnHandle, _room: &Name, local: Left) -> Result<bool, BusError> {
        Ok(local.last_of_user)
    }

    async fn publish(
        &self,
        msg: &Broadcast,
        opts: PublishOptions<'_>,
    ) -> Result<Published, BusError> {
        let append = || match (&msg.audience, opts.history) {
            (Audience::Room(room), Some(spec)) => {
                Some(
                    self.streams
                        .append(&msg.tenant, room, spec, msg.frame.json_bytes()),
                )
            }
            _ => None,
        };
        Ok(match opts.idempotency_key {
            Some(key) => {
                let room = match &msg.audience {
                    Audience::Room(r) => Some(r.clone()),
                    _ => None,
                };
                self.keys
                    .once((msg.tenant.clone(), room, key.clone()), &msg.id, append)
            }
            None => Published::Accepted { position: append() },
        })
    }

    async fn history(
        &self,
        tenant: &Name,
        room: &Name,
        spec: StreamSpec,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BusError> {
        Ok(self.streams.read(tenant, room, spec, query))
    }

    async fn presence(&self, tenant: &Name, room: &Name) -> Result<Vec<PresenceMember>, BusError> {
        Ok(self.hub.presence(tenant, room))
    }

    async fn disconnect_user(&self, _tenant: &Name, _user: &Name) -> Result<(), BusError> {
        Ok(())
    }

    async fn cluster_stats(&self) -> Result<ClusterStats, BusError> {
        Ok(ClusterStats {
            nodes: 1,
            counts: Counts {
                connections: self.hub.connection_count() as u64,
                rooms: self.hub.room_count() as u64,
            },
            bus: self.kind().into(),
        })
    }

    async fn shutdown(&self) {}
}
