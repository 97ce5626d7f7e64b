//! Small copies of wire bytes (a request's or an answer's head, a short piece of a body),
//! carved out of a block each worker shares among them rather than allocated one by one.
//!
//! The codec copies what it keeps out of its read buffers, so that those stay whole and are
//! reused. Copied one by one, each head cost two allocations (the bytes, then the count
//! shared by the header values sliced from them) and each piece of a body one: five per
//! proxied request of the six it made, and with musl's allocator, which takes one lock for
//! the whole process, every worker waits on the others' allocations. From a block they cost
//! an allocation per block, and a block comes back whole once every piece cut from it is
//! dropped.
//!
//! A piece keeps its block alive, so a long-held piece (a long poll's request head, kept to
//! send again) holds up to [`BLOCK`] bytes rather than its own size; pieces over [`LARGEST`]
//! are copied alone.

use bytes::{Bytes, BytesMut};

/// The size of a worker's block.
const BLOCK: usize = 4 * 1024;
/// Pieces larger than this are copied alone (a block holds at least four).
const LARGEST: usize = 1024;

thread_local! {
    static CURRENT: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `data` as its own Bytes, from this worker's block when small.
pub(super) fn copy(data: &[u8]) -> Bytes {
    if data.len() > LARGEST {
        return Bytes::copy_from_slice(data);
    }
    CURRENT.with_borrow_mut(|block| {
        // The block's room is what no piece was cut from; the whole of it again once every
        // piece is dropped. A block still in use is left to its pieces.
        if block.capacity() < data.len() && !block.try_reclaim(data.len()) {
            *block = BytesMut::with_capacity(BLOCK);
        }
        block.extend_from_slice(data);
        block.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_share_a_block_and_keep_their_bytes() {
        // A fresh thread: a block of its own.
        std::thread::spawn(|| {
            let first = copy(b"GET / HTTP/1.1\r\n\r\n");
            let second = copy(b"HTTP/1.1 200 OK\r\n\r\n");
            assert_eq!(
                second.as_ptr() as usize,
                first.as_ptr() as usize + first.len()
            );
            // Many more pieces, through several blocks: the ones kept are untouched.
            let kept: Vec<Bytes> = (0..2_000u32).map(|i| copy(&i.to_be_bytes())).collect();
            assert_eq!(&first[..], b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(&second[..], b"HTTP/1.1 200 OK\r\n\r\n");
            for (i, piece) in kept.iter().enumerate() {
                assert_eq!(piece[..], (i as u32).to_be_bytes());
            }
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn a_block_whose_pieces_are_all_dropped_is_used_again() {
        std::thread::spawn(|| {
            let start = copy(&[1; 100]).as_ptr() as usize;
            // Enough for many blocks, each piece dropped at once: the block is taken back in
            // place every time it fills, so every piece lies in the first block.
            for _ in 0..1_000 {
                let at = copy(&[2; 700]).as_ptr() as usize;
                assert!((start..start + BLOCK).contains(&at), "a new block was made");
            }
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn a_large_piece_is_copied_alone() {
        std::thread::spawn(|| {
            let small = copy(b"small");
            let large = copy(&[7; LARGEST + 1]);
            let next = copy(b"next");
            assert_eq!(&large[..], &[7; LARGEST + 1][..]);
            // The large one did not come from the block: the next small one follows the first.
            assert_eq!(
                next.as_ptr() as usize,
                small.as_ptr() as usize + small.len()
            );
        })
        .join()
        .expect("the test thread");
    }
}
