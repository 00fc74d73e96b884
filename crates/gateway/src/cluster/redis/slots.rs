//! Redis Cluster hash slots: which slot a key or channel lives in, and a
//! short hash tag for any given slot.
//!
//! A Redis Cluster splits the keyspace into 16,384 slots by the CRC16 of a
//! key's hash tag (the part inside the first `{…}`, or the whole key). A
//! script may only touch keys and shard channels of one slot, so every name
//! fanout builds carries the tag of what it belongs to (`{t/r}`, `{t}`), and
//! the few names that must land in a *chosen* slot (a shard's probe channel)
//! use [`tag_for_slot`].

/// Number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// The slot of a key or shard channel (hash tags honoured).
pub(crate) fn slot_of(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// A short hash tag (`#<n>`, without braces) whose slot is `slot`.
///
/// Found by counting up: every slot is reached by some n below 200,000, so
/// this costs at most a few milliseconds, and it only runs when the
/// topology changes. `#` is not a name byte, so such a tag never equals a
/// room's or a tenant's.
pub(crate) fn tag_for_slot(slot: u16) -> String {
    let slot = slot % SLOTS;
    (0u32..)
        .map(|n| format!("#{n}"))
        .find(|tag| fred::util::redis_keyslot(tag.as_bytes()) == slot)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_decide_the_slot() {
        assert_eq!(slot_of("p:{t/r}:hosts"), slot_of("t/r"));
        assert_eq!(slot_of("p:{t/r}:ch"), slot_of("p:{t/r}:in:node-1"));
        assert_ne!(slot_of("p:{t/a}:ch"), slot_of("p:{t/b}:ch"));
        // Known value from `CLUSTER KEYSLOT foo` (Redis documentation).
        assert_eq!(slot_of("foo"), 12_182);
    }

    #[test]
    fn a_tag_is_found_for_every_slot_and_lands_there() {
        for slot in [0, 1, 5_000, 12_182, SLOTS - 1] {
            let tag = tag_for_slot(slot);
            assert!(tag.starts_with('#'), "{tag}");
            assert_eq!(slot_of(&format!("x:{{{tag}}}:probe")), slot, "{tag}");
        }
    }
}
