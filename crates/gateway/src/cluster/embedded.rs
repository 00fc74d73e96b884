//! The in-process bus of a single node: zero setup, same protocol.
//!
//! There are no other nodes, so publishing beyond the hub is a no-op, and
//! presence and counts are the hub's. Connection limits were already
//! enforced atomically by the hub when it admitted the connection.

use async_trait::async_trait;
use fanout_protocol::api::{ClusterStats, Counts};
use fanout_protocol::{Name, PresenceMember};

use super::{AdmitError, Bus, BusError, NotReady};
use crate::hub::{ConnHandle, ConnLimits, Hub, Joined, Left};
use crate::message::Broadcast;

/// The bus of a node without Redis.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    hub: Hub,
}

impl EmbeddedBus {
    /// A bus that answers from `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
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

    async fn publish(&self, _msg: &Broadcast) -> Result<(), BusError> {
        Ok(())
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
