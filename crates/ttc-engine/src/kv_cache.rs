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

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::models::ModelConfig;

pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A sequence's handle in the cache (and in the engine's sequence API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SeqId(pub u32);

/// Which blocks are free and how many holders each used block has. Pure bookkeeping.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    ref_counts: Vec<u32>,
    /// Free blocks, popped from the end: lowest ids first, so runs are reproducible.
    free: Vec<u32>,
    peak_in_use: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as u32).rev().collect(),
            peak_in_use: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn in_use(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn peak_in_use(&self) -> usize {
        self.peak_in_use
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    fn allocate(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.ref_counts[b as usize] = 1;
        self.peak_in_use = self.peak_in_use.max(self.in_use());
        Some(b)
    }

    fn retain(&mut self, block: u32) {
        self.ref_counts[block as usize] += 1;
    }

    fn release(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        debug_assert!(*rc > 0, "release of a free block");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(block);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct BlockTable {
    blocks: Vec<u32>,
    /// Tokens stored.
    len: usize,
}

/// The pool's storage and the sequences' block tables.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: usize,
    kv_dim: usize,
    alloc: BlockAllocator,
    tables: BTreeMap<SeqId, BlockTable>,
    next_id: u32,
    bytes_per_token: usize,
}

impl KvCache {
    /// A pool of `num_blocks` blocks of `block_size` tokens for `config`'s layers, on `device`.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(EngineError::InvalidArgument(
                "the KV cache needs at least one block".into(),
            ));
        }
        let kv_dim = config.n_kv_heads * config.head_dim;
        let rows = num_blocks * block_size;
        let mut k = Vec::with_capacity(config.n_layers);
        let mut v = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            k.push(Tensor::zeros((rows, kv_dim), DType::F32, device)?);
            v.push(Tensor::zeros((rows, kv_dim), DType::F32, device)?);
        }
        Ok(Self {
            k,
            v,
            block_size,
            kv_dim,
            alloc: BlockAllocator::new(num_blocks),
            tables: BTreeMap::new(),
            next_id: 0,
            bytes_per_token: config.kv_bytes_per_token(),
        })
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

    /// Bytes of the blocks in use at the high-water mark.
    pub fn bytes_peak(&self) -> usize {
        self.alloc.peak_in_use() * self.block_bytes()
    }

    pub fn bytes_in_use(&self) -> usize {
        self.alloc.in_use() * self.block_bytes()
    }

    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.k[layer], &self.v[layer])
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn new_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.tables.insert(id, BlockTable::default());
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

    /// A new sequence holding every block of `parent` (no K/V is copied).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let table = self.table(parent)?.clone();
        for &b in &table.blocks {
            self.alloc.retain(b);
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.tables.insert(id, table);
        Ok(id)
    }

    /// Drops `seq`; blocks no other sequence holds return to the pool.
    pub fn free(&mut self, seq: SeqId) {
        if let Some(table) = self.tables.remove(&seq) {
            for b in table.blocks {
                self.alloc.release(b);
            }
        }
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
        if needed + shared.len() > self.alloc.num_free() {
            return Err(EngineError::KvCacheFull {
                needed_blocks: needed + shared.len(),
                free_blocks: self.alloc.num_free(),
                block_bytes: self.block_bytes(),
            });
        }
        for i in shared {
            let old = table.blocks[i];
            let new = self.alloc.allocate().expect("checked above");
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
                .push(self.alloc.allocate().expect("checked above"));
        }
        self.tables.insert(seq, table);
        Ok(())
    }

    /// Records that `n` tokens were written after `seq`'s end (after `reserve`).
    pub fn commit(&mut self, seq: SeqId, n: usize) -> Result<()> {
        let bs = self.block_size;
        let t = self.tables.get_mut(&seq).ok_or_else(|| unknown(seq))?;
        if t.len + n > t.blocks.len() * bs {
            return Err(EngineError::InvalidArgument(format!(
                "commit past the reserved blocks of {seq:?}"
            )));
        }
        t.len += n;
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
            let rows = pool.narrow(0, src as usize * bs, tokens)?.copy()?; // a view would alias the pool
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
        cache.reserve(seq, n).unwrap();
        cache.commit(seq, n).unwrap();
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
        c.commit(p, 2).unwrap();
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
