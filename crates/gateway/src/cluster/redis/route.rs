//! Publishing through Redis and reading room streams back: the calls of
//! the route and history scripts, and the decoding of their replies.
//!
//! Kept apart from `bus` so that the script's argument lists (long, and
//! positional) sit next to the code that reads their answers.

use std::sync::Arc;

use bytes::Bytes;
use fanout_protocol::Name;
use fred::interfaces::PubsubInterface;
use fred::types::Value;

use super::keys::{Keyspace, Layout};
use super::scripts;
use super::shards::Redis;
use crate::clock::now_millis;
use crate::cluster::{
    BusError, HistoryPage, HistoryQuery, IDEMPOTENCY_WINDOW, Published, StreamSpec, new_epoch,
};
use crate::message::Position;
use crate::metrics as m;

/// What one publish needs besides its envelope.
pub(crate) struct Route<'a> {
    /// Key and channel names.
    pub(crate) keys: &'a Keyspace,
    /// The connections, by shard.
    pub(crate) redis: &'a Redis,
    /// `redis.direct_max_nodes`.
    pub(crate) direct_max_nodes: usize,
    /// The message id (remembered with an idempotency key).
    pub(crate) id: &'a str,
    /// The message's JSON frame without position (stored as history).
    pub(crate) json: Bytes,
    /// The room keeps history.
    pub(crate) history: Option<StreamSpec>,
    /// The publish's idempotency key.
    pub(crate) idempotency_key: Option<&'a Name>,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v.as_string())
}

/// Parses a remembered first answer, `id|offset|epoch` (offset 0: none).
fn first_answer(s: &str) -> Option<Published> {
    let mut parts = s.splitn(3, '|');
    let id = parts.next()?.to_owned();
    let offset: u64 = parts.next()?.parse().ok()?;
    let epoch = parts.next().unwrap_or_default();
    let position = (offset > 0 && !epoch.is_empty()).then(|| Position {
        offset,
        epoch: Arc::from(epoch),
    });
    Some(Published::Duplicate { id, position })
}

impl Route<'_> {
    fn idempotency_ttl(&self) -> i64 {
        if self.idempotency_key.is_some() {
            millis(IDEMPOTENCY_WINDOW)
        } else {
            0
        }
    }

    /// A room message: route script (with history and idempotency).
    pub(crate) async fn room(
        &self,
        tenant: &Name,
        room: &Name,
        envelope: Bytes,
    ) -> Result<Published, BusError> {
        let keys = self.keys;
        let (size, ttl, meta_ttl) = match self.history {
            Some(spec) => (spec.size as i64, millis(spec.ttl), millis(spec.meta_ttl())),
            None => (0, 0, 0),
        };
        let mut script_keys = vec![keys.room_hosts(tenant, room)];
        if size > 0 {
            script_keys.push(keys.room_stream(tenant, room));
            script_keys.push(keys.room_meta(tenant, room));
        }
        if let Some(k) = self.idempotency_key {
            script_keys.push(keys.room_idempotency(tenant, room, k));
        }
        let args: Vec<Value> = vec![
            keys.node().into(),
            now_millis().to_string().into(),
            self.direct_max_nodes.to_string().into(),
            keys.room_channel(tenant, room).into(),
            keys.room_inbox_prefix(tenant, room).into(),
            Value::Bytes(envelope),
            size.into(),
            ttl.into(),
            meta_ttl.into(),
            new_epoch().to_string().into(),
            Value::Bytes(if size > 0 {
                self.json.clone()
            } else {
                Bytes::new()
            }),
            self.idempotency_ttl().into(),
            self.id.into(),
            keys.publish_verb().into(),
            if keys.layout() == Layout::Cluster {
                "1"
            } else {
                "0"
            }
            .into(),
        ];
        let reply: Vec<Value> = self
            .redis
            .eval(&scripts::ROUTE_ROOM, script_keys, args)
            .await
            .map_err(|e| BusError::redis("route_room", e))?;
        let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0);
        match int(1) {
            -1 => {
                return text(reply.get(5)).and_then(|s| first_answer(&s)).ok_or(
                    BusError::ScriptReply {
                        script: "route_room",
                    },
                );
            }
            1 => m::routed("room_channel", 1),
            _ => m::routed("direct", int(2).max(0) as u64),
        }
        m::unheard("room", int(6).max(0) as u64);
        let position = match (int(3), text(reply.get(4))) {
            (offset, Some(epoch)) if offset > 0 && !epoch.is_empty() => Some(Position {
                offset: offset as u64,
                epoch: Arc::from(epoch),
            }),
            (0, _) if self.history.is_none() => None,
            _ => {
                return Err(BusError::ScriptReply {
                    script: "route_room",
                });
            }
        };
        Ok(Published::Accepted { position })
    }

    /// A user message (or, with no id, a disconnect): route script.
    pub(crate) async fn user(
        &self,
        tenant: &Name,
        user: &Name,
        envelope: Bytes,
        dead: Vec<String>,
    ) -> Result<Published, BusError> {
        let keys = self.keys;
        let idempotency = match self.idempotency_key {
            Some(k) => keys.tenant_idempotency(tenant, k),
            None => keys.user_conns(tenant, user),
        };
        let mut args: Vec<Value> = vec![
            keys.node().into(),
            keys.tenant_inbox_prefix(tenant).into(),
            Value::Bytes(envelope),
            self.idempotency_ttl().into(),
            self.id.into(),
            keys.publish_verb().into(),
        ];
        args.extend(dead.into_iter().map(Value::from));
        let reply: Vec<Value> = self
            .redis
            .eval(
                &scripts::ROUTE_USER,
                vec![keys.user_conns(tenant, user), idempotency],
                args,
            )
            .await
            .map_err(|e| BusError::redis("route_user", e))?;
        let sent = reply.first().and_then(Value::as_i64).unwrap_or(0);
        if sent < 0 {
            return text(reply.get(1)).and_then(|s| first_answer(&s)).ok_or(
                BusError::ScriptReply {
                    script: "route_user",
                },
            );
        }
        m::routed("direct", sent as u64);
        let unheard = reply.get(2).and_then(Value::as_i64).unwrap_or(0);
        m::unheard("user", unheard.max(0) as u64);
        Ok(Published::Accepted { position: None })
    }

    /// A tenant-wide message: one PUBLISH, or the script with a key.
    pub(crate) async fn tenant(
        &self,
        tenant: &Name,
        envelope: Bytes,
    ) -> Result<Published, BusError> {
        let channel = self.keys.tenant_channel(tenant);
        match self.idempotency_key {
            None => {
                let shard = self
                    .redis
                    .shard_of_key(&channel)
                    .ok_or(BusError::NoReply { op: "publish" })?;
                let sent: Result<i64, _> = match self.keys.layout() {
                    Layout::Single => shard.publisher.publish(channel, envelope).await,
                    Layout::Cluster => shard.publisher.spublish(channel, envelope).await,
                };
                sent.map_err(|e| BusError::redis("publish", e))?;
            }
            Some(key) => {
                let first: String = self
                    .redis
                    .eval(
                        &scripts::ROUTE_TENANT,
                        vec![self.keys.tenant_idempotency(tenant, key)],
                        vec![
                            Value::from(channel),
                            Value::Bytes(envelope),
                            self.idempotency_ttl().into(),
                            self.id.into(),
                            self.keys.publish_verb().into(),
                        ],
                    )
                    .await
                    .map_err(|e| BusError::redis("route_tenant", e))?;
                if !first.is_empty() {
                    return first_answer(&first).ok_or(BusError::ScriptReply {
                        script: "route_tenant",
                    });
                }
            }
        }
        m::routed("tenant_channel", 1);
        Ok(Published::Accepted { position: None })
    }
}

/// Reads a room's stream with the history script.
pub(crate) async fn read_history(
    redis: &Redis,
    keys: &Keyspace,
    tenant: &Name,
    room: &Name,
    spec: StreamSpec,
    query: HistoryQuery,
) -> Result<HistoryPage, BusError> {
    let after = query
        .after
        .map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
    let reply: Vec<Value> = redis
        .eval(
            &scripts::HISTORY,
            vec![keys.room_stream(tenant, room), keys.room_meta(tenant, room)],
            vec![
                Value::from(new_epoch().to_string()),
                millis(spec.meta_ttl()).into(),
                after.into(),
                (query.limit as i64).into(),
            ],
        )
        .await
        .map_err(|e| BusError::redis("history", e))?;
    let bad = || BusError::ScriptReply { script: "history" };
    let epoch = text(reply.first()).ok_or_else(bad)?;
    let num = |i: usize| -> Option<u64> {
        let v = reply.get(i)?;
        v.as_u64().or_else(|| v.as_string()?.parse().ok())
    };
    let top = num(1).ok_or_else(bad)?;
    let oldest = num(2).ok_or_else(bad)?;
    let mut messages = Vec::with_capacity(reply.len().saturating_sub(3) / 2);
    let mut i = 3;
    while i + 1 < reply.len() {
        let offset = num(i).ok_or_else(bad)?;
        let json = match &reply[i + 1] {
            Value::Bytes(b) => b.clone(),
            Value::String(s) => Bytes::from(s.to_string()),
            _ => return Err(bad()),
        };
        messages.push((offset, json));
        i += 2;
    }
    messages.sort_by_key(|m| m.0);
    Ok(HistoryPage {
        epoch: Arc::from(epoch),
        top,
        oldest,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_answer_parses_with_and_without_a_position() {
        assert_eq!(
            first_answer("m1|41|k3x9"),
            Some(Published::Duplicate {
                id: "m1".into(),
                position: Some(Position {
                    offset: 41,
                    epoch: Arc::from("k3x9")
                })
            })
        );
        assert_eq!(
            first_answer("m2|0|"),
            Some(Published::Duplicate {
                id: "m2".into(),
                position: None
            })
        );
        assert_eq!(first_answer("garbage"), None);
    }
}
