//! The paged KV cache: keys and values of every sequence live in fixed-size blocks of one pool;
//! each sequence has a block table. Blocks are ref-counted, so `fork` shares all of a parent's
//! blocks without copying any K/V (a prompt is stored once, whatever the number of samples or
//! beams), and `free` returns a block to the pool when its last holder goes. Writing into a
//! shared, partly filled last block first copies it (copy-on-write).
//!
//! The scheme of vLLM's PagedAttention (Kwon et al., SOSP 2023); llama.cpp shares cells between
//! sequences through `llama_memory_seq_cp` to the same end. The pool is one tensor per layer for K
//! and one for V, `(num_blocks * block_size, n_kv_heads * head_dim)`, so that a batch's new rows
//! are written with one `scatter_set` per layer and a sequence's rows are read by `index_select`
//! through its table, on any candle device.
//!
//! The pool grows on demand up to a limit (the engine's `--kv-memory`), and keeps the full
//! blocks of indexed sequences after they end ([`prefix`]): a later prompt that starts with the
//! same tokens takes those blocks instead of computing them again. Blocks that only the index
//! holds are evicted, least recently used first, before the pool grows.

mod allocator;
mod prefix;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::models::ModelConfig;

pub use allocator::BlockAllocator;
use prefix::PrefixIndex;
pub use prefix::{chain_key, BlockKey};

pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A sequence's handle in the cache (and in the engine's sequence API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SeqId(pub u32);

#[derive(Debug, Clone, Default)]
struct BlockTable {
    blocks: Vec<u32>,
    /// Tokens stored.
    len: usize,
    /// The token ids stored, in order (what the prefix index keys blocks by).
    tokens: Vec<u32>,
    /// Chain keys of the full blocks (indexed sequences only).
    keys: Vec<BlockKey>,
    /// Whether this sequence's full blocks go into the prefix index.
    indexed: bool,
}

/// What the pool holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub block_size: usize,
    pub block_bytes: usize,
    pub bytes_per_token: usize,
    /// Blocks the pool has storage for now.
    pub capacity_blocks: usize,
    /// Blocks it may grow to.
    pub max_blocks: usize,
    pub free_blocks: usize,
    /// Blocks with a holder: a live sequence or the prefix index.
    pub in_use_blocks: usize,
    /// Blocks in the prefix index.
    pub cached_blocks: usize,
    /// Blocks only the prefix index holds: free to evict.
    pub evictable_blocks: usize,
    /// The most blocks in use at once since the last reset (a session resets it).
    pub peak_in_use_blocks: usize,
    pub sequences: usize,
}

impl KvStats {
    /// Blocks live sequences hold.
    pub fn live_blocks(&self) -> usize {
        self.in_use_blocks - self.evictable_blocks
    }

    pub fn peak_bytes(&self) -> usize {
        self.peak_in_use_blocks * self.block_bytes
    }
}

/// The pool's storage, the sequences' block tables and the prefix index.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: usize,
    kv_dim: usize,
    alloc: BlockAllocator,
    max_blocks: usize,
    tables: BTreeMap<SeqId, BlockTable>,
    prefix: PrefixIndex,
    next_id: u32,
    bytes_per_token: usize,
    device: Device,
}

impl KvCache {
    /// A pool of exactly `num_blocks` blocks of `block_size` tokens for `config`'s layers, on
    /// `device`.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if num_blocks == 0 {
            return Err(EngineError::InvalidArgument(
                "the KV cache needs at least one block".into(),
            ));
        }
        Self::growable(config, num_blocks, num_blocks, block_size, device)
    }

    /// A pool with storage for `initial_blocks` that grows on demand up to `max_blocks`.
    pub fn growable(
        config: &ModelConfig,
        initial_blocks: usize,
        max_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if max_blocks == 0 || block_size == 0 || initial_blocks > max_blocks {
            return Err(EngineError::InvalidArgument(format!(
                "a KV cache of {initial_blocks} blocks growing to {max_blocks} blocks of {block_size} tokens"
            )));
        }
        let kv_dim = config.n_kv_heads * config.head_dim;
        let mut cache = Self {
            k: Vec::with_capacity(config.n_layers),
            v: Vec::with_capacity(config.n_layers),
            block_size,
            kv_dim,
            alloc: BlockAllocator::new(0),
            max_blocks,
            tables: BTreeMap::new(),
            prefix: PrefixIndex::default(),
            next_id: 0,
            bytes_per_token: config.kv_bytes_per_token(),
            device: device.clone(),
        };
        for _ in 0..config.n_layers {
            cache
                .k
                .push(Tensor::zeros((0, kv_dim), DType::F32, device)?);
            cache
                .v
                .push(Tensor::zeros((0, kv_dim), DType::F32, device)?);
        }
        if initial_blocks > 0 {
            cache.grow(initial_blocks)?;
        }
        Ok(cache)
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
        tokens.div_ceil(block_size)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn bytes_per_token(&self) -> usize {
        self.bytes_per_token
    }

    pub fn block_bytes(&self) -> usize {
        self.bytes_per_token * self.block_size
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Bytes of the blocks in use at the high-water mark.
    pub fn bytes_peak(&self) -> usize {
        self.alloc.peak_in_use() * self.block_bytes()
    }

    pub fn bytes_in_use(&self) -> usize {
        self.alloc.in_use() * self.block_bytes()
    }

    /// Starts a new high-water mark from what is in use now.
    pub fn reset_peak(&mut self) {
        self.alloc.reset_peak();
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            block_size: self.block_size,
            block_bytes: self.block_bytes(),
            bytes_per_token: self.bytes_per_token,
            capacity_blocks: self.alloc.num_blocks(),
            max_blocks: self.max_blocks,
            free_blocks: self.alloc.num_free(),
            in_use_blocks: self.alloc.in_use(),
            cached_blocks: self.prefix.len(),
            evictable_blocks: self.evictable(),
            peak_in_use_blocks: self.alloc.peak_in_use(),
            sequences: self.tables.len(),
        }
    }

    fn evictable(&self) -> usize {
        self.prefix
            .oldest_first()
            .filter(|&b| self.alloc.ref_count(b) == 1)
            .count()
    }

    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.k[layer], &self.v[layer])
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// A new, empty sequence whose blocks are not indexed.
    pub fn new_sequence(&mut self) -> SeqId {
        self.insert_table(BlockTable::default())
    }

    /// A new sequence for `prompt` that starts with the longest run of its full blocks the
    /// prefix index has (shared, not copied), and whose own full blocks will be indexed.
    /// Returns the sequence and the number of prompt tokens it already holds: a multiple of
    /// the block size, and always short of the whole prompt, so that at least its last token
    /// is computed (its logits are the next token's).
    pub fn new_sequence_with_prefix(&mut self, prompt: &[u32]) -> (SeqId, usize) {
        let bs = self.block_size;
        let mut table = BlockTable {
            indexed: true,
            ..BlockTable::default()
        };
        let reusable = prompt.len().saturating_sub(1) / bs;
        for block_tokens in prompt.chunks_exact(bs).take(reusable) {
            let key = chain_key(table.keys.last().copied(), block_tokens);
            let Some(block) = self.prefix.get(key) else {
                break;
            };
            table.blocks.push(block);
            table.keys.push(key);
        }
        for &b in &table.blocks {
            self.alloc.retain(b);
        }
        for &b in table.blocks.iter().rev() {
            self.prefix.touch(b);
        }
        table.len = table.blocks.len() * bs;
        table.tokens = prompt[..table.len].to_vec();
        let matched = table.len;
        (self.insert_table(table), matched)
    }

    fn insert_table(&mut self, table: BlockTable) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.tables.insert(id, table);
        id
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    pub fn len(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map(|t| t.len).unwrap_or(0)
    }

    pub fn num_sequences(&self) -> usize {
        self.tables.len()
    }

    /// The blocks of `seq`, in order.
    pub fn blocks(&self, seq: SeqId) -> &[u32] {
        self.tables
            .get(&seq)
            .map(|t| t.blocks.as_slice())
            .unwrap_or(&[])
    }

    /// The token ids `seq` holds, in order.
    pub fn tokens(&self, seq: SeqId) -> &[u32] {
        self.tables
            .get(&seq)
            .map(|t| t.tokens.as_slice())
            .unwrap_or(&[])
    }

    /// A new sequence holding every block of `parent` (no K/V is copied).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let table = self.table(parent)?.clone();
        for &b in &table.blocks {
            self.alloc.retain(b);
        }
        Ok(self.insert_table(table))
    }

    /// Drops `seq`; blocks no other sequence (and not the prefix index) holds return to the
    /// pool.
    pub fn free(&mut self, seq: SeqId) {
        if let Some(table) = self.tables.remove(&seq) {
            // From the end back: the deepest block of a prefix is the first to go.
            for &b in table.blocks.iter().rev() {
                self.prefix.touch(b);
            }
            for b in table.blocks {
                self.alloc.release(b);
            }
        }
    }

    /// Evicts every block only the prefix index holds; returns how many.
    pub fn clear_prefix_cache(&mut self) -> usize {
        let mut n = 0;
        while self.evict_one() {
            n += 1;
        }
        n
    }

    /// Evicts the least recently used block that only the prefix index holds.
    fn evict_one(&mut self) -> bool {
        let Some(block) = self
            .prefix
            .oldest_first()
            .find(|&b| self.alloc.ref_count(b) == 1)
        else {
            return false;
        };
        self.prefix.remove(block);
        self.alloc.release(block);
        true
    }

    /// Grows the pool so that `blocks` more blocks than its live sequences hold fit without
    /// evicting (up to its limit): a request's plan, made room for once before it runs.
    pub fn ensure_capacity(&mut self, blocks: usize) -> Result<()> {
        let live = self.alloc.in_use() - self.evictable();
        let target = (live + blocks).min(self.max_blocks);
        let have = self.alloc.num_blocks();
        if target > have {
            self.grow(target - have)?;
        }
        Ok(())
    }

    /// Makes `needed` blocks free: evicts unused cached blocks, least recently used first,
    /// then grows the pool (doubling, up to its limit).
    fn make_room(&mut self, needed: usize) -> Result<()> {
        if self.alloc.num_free() >= needed {
            return Ok(());
        }
        let room = self.max_blocks - self.alloc.num_blocks();
        let available = self.alloc.num_free() + self.evictable() + room;
        if available < needed {
            // Refused before anything is evicted: a failed request costs the cache nothing.
            return Err(EngineError::KvCacheFull {
                needed_blocks: needed,
                free_blocks: available,
                block_bytes: self.block_bytes(),
            });
        }
        while self.alloc.num_free() < needed && self.evict_one() {}
        let short = needed.saturating_sub(self.alloc.num_free());
        if short > 0 {
            self.grow(short.max(self.alloc.num_blocks()).min(room))?;
        }
        Ok(())
    }

    /// Adds `extra` blocks of storage after the current ones (block ids, and so every slot
    /// handed out, stay valid).
    fn grow(&mut self, extra: usize) -> Result<()> {
        let old_rows = self.alloc.num_blocks() * self.block_size;
        let rows = old_rows + extra * self.block_size;
        for pool in self.k.iter_mut().chain(self.v.iter_mut()) {
            let bigger = Tensor::zeros((rows, self.kv_dim), DType::F32, &self.device)?;
            if old_rows > 0 {
                bigger.slice_set(pool, 0, 0)?;
            }
            *pool = bigger;
        }
        self.alloc.grow(extra);
        Ok(())
    }

    /// Makes room to append `n` tokens to `seq`: new blocks as needed, and a private copy of
    /// every shared block that the new tokens would be written into (copy-on-write: the
    /// partly filled last block after a fork, or a reserved block shared by a fork). All or
    /// nothing: on failure the table is as it was.
    pub fn reserve(&mut self, seq: SeqId, n: usize) -> Result<()> {
        let bs = self.block_size;
        let mut table = self.table(seq)?.clone();
        if n == 0 {
            return Ok(());
        }
        let first_written = table.len / bs;
        let shared: Vec<usize> = (first_written..table.blocks.len())
            .filter(|&i| self.alloc.ref_count(table.blocks[i]) > 1)
            .collect();
        let needed = Self::blocks_for(table.len + n, bs).saturating_sub(table.blocks.len());
        self.make_room(needed + shared.len())?;
        for i in shared {
            let old = table.blocks[i];
            let new = self.alloc.allocate().expect("made room above");
            // Only the block holding the sequence's end has rows of it to keep.
            let rows = if i == first_written {
                table.len % bs
            } else {
                0
            };
            if rows > 0 {
                self.copy_block(old, new, rows)?;
            }
            self.alloc.release(old);
            table.blocks[i] = new;
        }
        for _ in 0..needed {
            table
                .blocks
                .push(self.alloc.allocate().expect("made room above"));
        }
        self.tables.insert(seq, table);
        Ok(())
    }

    /// Records that `tokens` were written after `seq`'s end (after `reserve`); an indexed
    /// sequence's blocks that this fills go into the prefix index.
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32]) -> Result<()> {
        let bs = self.block_size;
        let t = self.tables.get_mut(&seq).ok_or_else(|| unknown(seq))?;
        if t.len + tokens.len() > t.blocks.len() * bs {
            return Err(EngineError::InvalidArgument(format!(
                "commit past the reserved blocks of {seq:?}"
            )));
        }
        t.len += tokens.len();
        t.tokens.extend_from_slice(tokens);
        if t.indexed {
            for i in t.keys.len()..t.len / bs {
                let key = chain_key(t.keys.last().copied(), &t.tokens[i * bs..(i + 1) * bs]);
                t.keys.push(key);
                if self.prefix.insert(key, t.blocks[i]) {
                    self.alloc.retain(t.blocks[i]);
                }
            }
        }
        Ok(())
    }

    /// The pool row of each position in `range` of `seq` (positions may run past `len` up to
    /// the reserved blocks).
    pub fn slots(&self, seq: SeqId, range: std::ops::Range<usize>) -> Result<Vec<u32>> {
        let t = self.table(seq)?;
        let bs = self.block_size;
        if range.end > t.blocks.len() * bs {
            return Err(EngineError::InvalidArgument(format!(
                "positions {range:?} of {seq:?} are not reserved"
            )));
        }
        Ok(range
            .map(|p| t.blocks[p / bs] * bs as u32 + (p % bs) as u32)
            .collect())
    }

    fn table(&self, seq: SeqId) -> Result<&BlockTable> {
        self.tables.get(&seq).ok_or_else(|| unknown(seq))
    }

    fn copy_block(&self, src: u32, dst: u32, tokens: usize) -> Result<()> {
        let bs = self.block_size;
        for pool in self.k.iter().chain(&self.v) {
            // A view would alias the pool; `Tensor::copy` would clone the whole pool's storage
            // (it copies every layer's pool on each copy-on-write). This copies the rows alone.
            let rows = pool
                .narrow(0, src as usize * bs, tokens)?
                .force_contiguous()?;
            pool.slice_set(&rows, 0, dst as usize * bs)?;
        }
        Ok(())
    }
}

fn unknown(seq: SeqId) -> EngineError {
    EngineError::InvalidArgument(format!("unknown sequence {seq:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Architecture, ModelConfig};

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            n_layers: 2,
            hidden_size: 8,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            rope_dim: 4,
            rope_layout: crate::models::RopeLayout::Halves,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            context_length: 1024,
            vocab_size: 10,
        }
    }

    fn filled(cache: &mut KvCache, seq: SeqId, n: usize) {
        let tokens: Vec<u32> = (0..n as u32).collect();
        write(cache, seq, &tokens);
    }

    fn write(cache: &mut KvCache, seq: SeqId, tokens: &[u32]) {
        cache.reserve(seq, tokens.len()).unwrap();
        cache.commit(seq, tokens).unwrap();
    }

    /// Writes `value` into every K row of layer 0 of `seq`'s positions `range`.
    fn set_rows(cache: &KvCache, seq: SeqId, range: std::ops::Range<usize>, value: f32) {
        let slots = cache.slots(seq, range).unwrap();
        let n = slots.len();
        let idx = Tensor::new(slots.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap()
            .broadcast_as((n, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let rows = Tensor::full(value, (n, 4), &Device::Cpu).unwrap();
        cache.layer(0).0.scatter_set(&idx, &rows, 0).unwrap();
    }

    fn get_rows(cache: &KvCache, seq: SeqId, range: std::ops::Range<usize>) -> Vec<f32> {
        let slots = cache.slots(seq, range).unwrap();
        let idx = Tensor::new(slots.as_slice(), &Device::Cpu).unwrap();
        let rows = cache.layer(0).0.index_select(&idx, 0).unwrap();
        rows.mean(1).unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn a_later_prompt_takes_the_full_blocks_of_its_prefix() {
        let mut c = KvCache::growable(&config(), 0, 64, 4, &Device::Cpu).unwrap();
        let first: Vec<u32> = (100..110).collect(); // 2 full blocks and 2 tokens
        let (a, hit) = c.new_sequence_with_prefix(&first);
        assert_eq!(hit, 0);
        write(&mut c, a, &first);
        set_rows(&c, a, 0..10, 7.0);
        let a_blocks = c.blocks(a).to_vec();
        c.free(a);
        assert_eq!(c.stats().cached_blocks, 2, "only full blocks are kept");
        assert_eq!(c.stats().evictable_blocks, 2);

        // Same first 9 tokens, then different ones: the two full blocks come back.
        let mut second = first[..9].to_vec();
        second.extend([1, 2, 3]);
        let (b, hit) = c.new_sequence_with_prefix(&second);
        assert_eq!(hit, 8);
        assert_eq!(c.blocks(b), &a_blocks[..2], "shared, not copied");
        assert_eq!(c.tokens(b), &second[..8]);
        assert_eq!(get_rows(&c, b, 0..8), vec![7.0; 8]);
        assert_eq!(c.stats().evictable_blocks, 0, "a live sequence holds them");

        // A prompt of exactly the cached blocks still computes its last token.
        let (d, hit) = c.new_sequence_with_prefix(&first[..8]);
        assert_eq!(hit, 4);
        // A different first token shares nothing, even with the same later tokens.
        let mut other = first.clone();
        other[0] = 0;
        let (e, hit) = c.new_sequence_with_prefix(&other);
        assert_eq!(hit, 0);
        for s in [b, d, e] {
            c.free(s);
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_and_returns_the_pool_to_its_baseline() {
        let mut c = KvCache::growable(&config(), 4, 4, 4, &Device::Cpu).unwrap();
        let baseline = c.allocator().num_free();
        let (a, _) = c.new_sequence_with_prefix(&[1; 9]);
        write(&mut c, a, &[1; 8]);
        c.free(a);
        let (b, _) = c.new_sequence_with_prefix(&[2; 9]);
        write(&mut c, b, &[2; 8]);
        c.free(b);
        assert_eq!(c.stats().cached_blocks, 4);
        assert_eq!(
            c.allocator().num_free(),
            0,
            "the pool is full of cached blocks"
        );
        // A new sequence needs a block: the oldest unused one goes, the deepest of `a` first.
        let s = c.new_sequence();
        c.reserve(s, 1).unwrap();
        assert_eq!(c.stats().cached_blocks, 3);
        let (probe, hit) = c.new_sequence_with_prefix(&[1; 9]);
        assert_eq!(
            hit, 4,
            "the first block of `a` is still there, its second is not"
        );
        c.free(probe);
        let (probe, hit) = c.new_sequence_with_prefix(&[2; 9]);
        assert_eq!(hit, 8, "`b` was used later and is whole");
        // Blocks a live sequence holds are never evicted.
        let err = c.reserve(probe, 8).unwrap_err();
        assert!(matches!(err, EngineError::KvCacheFull { .. }), "{err}");
        c.free(probe);
        c.free(s);
        assert_eq!(c.clear_prefix_cache(), 3);
        assert_eq!(c.allocator().num_free(), baseline);
        assert_eq!(c.stats().cached_blocks, 0);
    }

    #[test]
    fn the_pool_grows_to_its_limit_and_keeps_what_it_holds() {
        let mut c = KvCache::growable(&config(), 1, 6, 4, &Device::Cpu).unwrap();
        let s = c.new_sequence();
        filled(&mut c, s, 4);
        set_rows(&c, s, 0..4, 3.0);
        filled(&mut c, s, 12);
        assert_eq!(c.allocator().num_blocks(), 4, "grown to what was needed");
        assert_eq!(get_rows(&c, s, 0..4), vec![3.0; 4], "rows survive a growth");
        filled(&mut c, s, 8);
        assert_eq!(c.allocator().num_blocks(), 6, "capped at the limit");
        let err = c.reserve(s, 1).unwrap_err();
        assert!(
            matches!(err, EngineError::KvCacheFull { free_blocks: 0, .. }),
            "{err}"
        );
        c.ensure_capacity(100).unwrap();
        assert_eq!(c.allocator().num_blocks(), 6);
    }

    #[test]
    fn fork_shares_blocks_and_free_returns_them() {
        let mut c = KvCache::new(&config(), 16, 4, &Device::Cpu).unwrap();
        let p = c.new_sequence();
        filled(&mut c, p, 10); // 3 blocks, the last one half full
        assert_eq!(c.allocator().in_use(), 3);
        let kids: Vec<SeqId> = (0..4).map(|_| c.fork(p).unwrap()).collect();
        assert_eq!(c.allocator().in_use(), 3, "forking copies no block");
        assert!(c.blocks(p).iter().all(|&b| c.allocator().ref_count(b) == 5));
        // The first append to each child copies the shared partial block, and only that one.
        for (i, &k) in kids.iter().enumerate() {
            filled(&mut c, k, 1);
            assert_eq!(c.blocks(k)[..2], c.blocks(p)[..2]);
            assert_ne!(c.blocks(k)[2], c.blocks(p)[2]);
            assert_eq!(c.allocator().in_use(), 3 + i + 1);
        }
        for k in kids {
            c.free(k);
        }
        c.free(p);
        assert_eq!(
            c.allocator().num_free(),
            16,
            "the pool is exactly as it was"
        );
    }

    #[test]
    fn full_blocks_are_never_copied() {
        let mut c = KvCache::new(&config(), 8, 4, &Device::Cpu).unwrap();
        let p = c.new_sequence();
        filled(&mut c, p, 8);
        let k = c.fork(p).unwrap();
        filled(&mut c, k, 1);
        assert_eq!(c.blocks(k)[..2], c.blocks(p)[..]);
        assert_eq!(c.allocator().in_use(), 3);
    }

    #[test]
    fn a_reserved_block_shared_by_a_fork_is_copied_before_either_writes() {
        let mut c = KvCache::new(&config(), 8, 4, &Device::Cpu).unwrap();
        let p = c.new_sequence();
        filled(&mut c, p, 4); // one full block
        c.reserve(p, 1).unwrap(); // a second block reserved, still empty
        let k = c.fork(p).unwrap();
        assert_eq!(c.blocks(k), c.blocks(p));
        filled(&mut c, k, 1);
        assert_eq!(
            c.blocks(k)[0],
            c.blocks(p)[0],
            "the full block stays shared"
        );
        assert_ne!(
            c.blocks(k)[1],
            c.blocks(p)[1],
            "the child writes into a block of its own"
        );
    }

    #[test]
    fn reserve_fails_cleanly_when_the_pool_is_full() {
        let mut c = KvCache::new(&config(), 2, 4, &Device::Cpu).unwrap();
        let s = c.new_sequence();
        filled(&mut c, s, 6);
        let err = c.reserve(s, 5).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::KvCacheFull {
                    needed_blocks: 1,
                    free_blocks: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            (c.len(s), c.blocks(s).len()),
            (6, 2),
            "a failed reserve changes nothing"
        );
    }

    #[test]
    fn copy_on_write_copies_the_stored_rows() {
        let mut c = KvCache::new(&config(), 4, 4, &Device::Cpu).unwrap();
        let p = c.new_sequence();
        c.reserve(p, 2).unwrap();
        let slots = c.slots(p, 0..2).unwrap();
        let rows = Tensor::new(&[[1f32, 2., 3., 4.], [5., 6., 7., 8.]], &Device::Cpu).unwrap();
        let idx = Tensor::new(slots.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap()
            .broadcast_as((2, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        c.layer(1).0.scatter_set(&idx, &rows, 0).unwrap();
        c.commit(p, &[1, 2]).unwrap();
        let k = c.fork(p).unwrap();
        filled(&mut c, k, 1);
        let kid_slots = c.slots(k, 0..2).unwrap();
        assert_ne!(kid_slots, slots);
        let idx = Tensor::new(kid_slots.as_slice(), &Device::Cpu).unwrap();
        let copied = c
            .layer(1)
            .0
            .index_select(&idx, 0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(copied, rows.to_vec2::<f32>().unwrap());
    }
}
