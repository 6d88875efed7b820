//! Which blocks of the KV pool are free and how many holders each used block has: pure
//! bookkeeping, no tensors. A holder is a sequence's block table or the prefix index.

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

    /// Blocks the pool has room for now (it grows up to its limit).
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks with at least one holder (the prefix index's blocks included).
    pub fn in_use(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// The most blocks in use at once since the last [`reset_peak`](Self::reset_peak).
    pub fn peak_in_use(&self) -> usize {
        self.peak_in_use
    }

    pub fn reset_peak(&mut self) {
        self.peak_in_use = self.in_use();
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    /// Adds `extra` free blocks after the last one (the pool grew).
    pub(super) fn grow(&mut self, extra: usize) {
        let start = self.ref_counts.len() as u32;
        self.ref_counts.resize(self.ref_counts.len() + extra, 0);
        // Keep "lowest id first": the new ids go under the old free ones.
        let mut fresh: Vec<u32> = (start..start + extra as u32).rev().collect();
        fresh.append(&mut self.free);
        self.free = fresh;
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.ref_counts[b as usize] = 1;
        self.peak_in_use = self.peak_in_use.max(self.in_use());
        Some(b)
    }

    pub(super) fn retain(&mut self, block: u32) {
        self.ref_counts[block as usize] += 1;
    }

    pub(super) fn release(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        debug_assert!(*rc > 0, "release of a free block");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_keeps_lowest_ids_first() {
        let mut a = BlockAllocator::new(2);
        assert_eq!(a.allocate(), Some(0));
        a.grow(2);
        assert_eq!(
            (a.allocate(), a.allocate(), a.allocate()),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(a.allocate(), None);
        a.release(2);
        assert_eq!(a.allocate(), Some(2));
        assert_eq!(a.peak_in_use(), 4);
    }
}
