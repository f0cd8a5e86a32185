//! Byte-range arithmetic for `Download` (pure).

use std::ops::Range;

/// Largest content piece in one `DownloadResponse`, per the contract.
pub const MAX_DOWNLOAD_CHUNK: usize = 1024 * 1024;

/// The bytes a `Download(offset, length)` of an object of `size` bytes returns, or `None` when
/// the offset lies past the end (`OUT_OF_RANGE`). An offset equal to the size is an empty range;
/// `length` 0 means "to the end", and a range past the end is shortened to it.
pub fn resolve(offset: u64, length: u64, size: u64) -> Option<Range<u64>> {
    if offset > size {
        return None;
    }
    let end = if length == 0 {
        size
    } else {
        offset.saturating_add(length).min(size)
    };
    Some(offset..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve(0, 0, 10), Some(0..10));
        assert_eq!(resolve(2, 3, 10), Some(2..5));
        assert_eq!(resolve(8, 5, 10), Some(8..10), "shortened to the end");
        assert_eq!(resolve(10, 0, 10), Some(10..10), "offset == size is empty");
        assert_eq!(resolve(10, 4, 10), Some(10..10));
        assert_eq!(resolve(11, 0, 10), None);
        assert_eq!(resolve(0, 0, 0), Some(0..0));
        assert_eq!(resolve(1, 0, 0), None);
        assert_eq!(resolve(5, u64::MAX, 10), Some(5..10), "no overflow");
    }
}
