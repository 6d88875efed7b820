//! The prefix index: full KV blocks kept after their sequences end, found again by the token
//! ids of the whole prefix they close, and evicted least recently used first.
//!
//! A block's key is a hash chain over the prompt's blocks, `key(i) = H(key(i-1), tokens of block
//! i)`, as in vLLM's automatic prefix caching: two prefixes share block `i`'s key only if they
//! share every token up to its end. (SGLang keeps a radix tree of the tokens to the same end; a
//! chain of hashes over fixed blocks is what a paged pool needs.) The key is 128 bits, two
//! SipHash-1-3 passes with different salts, so a collision between two prefixes is not a
//! practical concern. Only full blocks are indexed: their K/V never changes again.
//!
//! Order of eviction: each block has the tick of its last use; when a sequence lets go of its
//! blocks they are touched from its end back to its start, so the deepest block of a prefix is
//! evicted first and a shared beginning (a system prompt) lasts longest.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The key of one full block: the hash of every token from the sequence's start to its end.
pub type BlockKey = u128;

/// The key of a block holding `tokens`, after the block whose key is `parent`.
pub fn chain_key(parent: Option<BlockKey>, tokens: &[u32]) -> BlockKey {
    let half = |salt: u64| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0x7474_6331)) << 64) | u128::from(half(0x7474_6332))
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: BlockKey,
    tick: u64,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    by_key: HashMap<BlockKey, u32>,
    by_block: HashMap<u32, Entry>,
    /// tick -> block: oldest first.
    lru: BTreeMap<u64, u32>,
    tick: u64,
}

impl PrefixIndex {
    pub fn len(&self) -> usize {
        self.by_block.len()
    }

    pub fn get(&self, key: BlockKey) -> Option<u32> {
        self.by_key.get(&key).copied()
    }

    /// Indexes `block` under `key`; false (and nothing changes) when the key already has a
    /// block or the block already has a key.
    pub fn insert(&mut self, key: BlockKey, block: u32) -> bool {
        if self.by_key.contains_key(&key) || self.by_block.contains_key(&block) {
            return false;
        }
        self.tick += 1;
        self.by_key.insert(key, block);
        self.by_block.insert(
            block,
            Entry {
                key,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, block);
        true
    }

    /// Marks `block` (if indexed) as just used.
    pub fn touch(&mut self, block: u32) {
        if let Some(e) = self.by_block.get_mut(&block) {
            self.lru.remove(&e.tick);
            self.tick += 1;
            e.tick = self.tick;
            self.lru.insert(self.tick, block);
        }
    }

    /// Indexed blocks, least recently used first.
    pub fn oldest_first(&self) -> impl Iterator<Item = u32> + '_ {
        self.lru.values().copied()
    }

    /// Drops `block` from the index.
    pub fn remove(&mut self, block: u32) {
        if let Some(e) = self.by_block.remove(&block) {
            self.by_key.remove(&e.key);
            self.lru.remove(&e.tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_whole_prefix() {
        let a = chain_key(None, &[1, 2, 3]);
        assert_eq!(a, chain_key(None, &[1, 2, 3]));
        assert_ne!(a, chain_key(None, &[1, 2, 4]));
        assert_ne!(chain_key(Some(a), &[5]), chain_key(None, &[5]));
        assert_ne!(chain_key(Some(a), &[5]), chain_key(Some(a + 1), &[5]));
    }

    #[test]
    fn least_recently_used_comes_first() {
        let mut p = PrefixIndex::default();
        assert!(p.insert(10, 0));
        assert!(p.insert(11, 1));
        assert!(!p.insert(10, 2), "one block per key");
        assert!(!p.insert(12, 1), "one key per block");
        p.touch(0);
        assert_eq!(p.oldest_first().collect::<Vec<_>>(), [1, 0]);
        p.remove(1);
        assert_eq!((p.len(), p.get(11), p.get(10)), (1, None, Some(0)));
    }
}
