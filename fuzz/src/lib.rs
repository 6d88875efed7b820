//! What the fuzz targets share.

use std::io::Write;
use std::path::PathBuf;

/// Writes `data` to this process's scratch file with extension `ext` (on tmpfs when there)
/// and returns its path: the readers under test take files.
pub fn scratch_file(ext: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ttc-fuzz-{}.{ext}", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("a scratch file");
    f.write_all(data).expect("write the input");
    path
}
