//! The dataset and prompt-file readers: any file gives its rows or one error naming the line.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ttc-fuzz-{}.jsonl", std::process::id()));
    {
        let mut f = std::fs::File::create(&path).expect("a scratch file");
        f.write_all(data).expect("write the input");
    }
    let _ = ttc_allocator::dataset::read_jsonl(&path);
    let _ = ttc_allocator::prompt_kind::read_prompts(path.to_str().expect("a UTF-8 path"));
    let _ = ttc_allocator::calibrate::read_labels(&path);
});
