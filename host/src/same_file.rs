//! Whether an open file is still the one a path names: a writer that keeps a file open
//! must notice when it was deleted, moved or replaced under it (an operator's `rm -rf`, a
//! log rotator), or it writes on into a file nobody can read. A leaf.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `file` (open) and `path` are the same file (device and inode). `None` when the open file
/// cannot be examined (then nothing is known about it); `Some(false)` when `path` names
/// nothing or another file. Also returns the open file's length.
pub fn same_file(file: &File, path: &Path) -> Option<(bool, u64)> {
    let open = file.metadata().ok()?;
    let same = std::fs::metadata(path)
        .is_ok_and(|named| named.dev() == open.dev() && named.ino() == open.ino());
    Some((same, open.len()))
}
