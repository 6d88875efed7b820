//! The dataset and prompt-file readers: any file gives its rows or one error naming the line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = ttc_fuzz::scratch_file("jsonl", data);
    let _ = ttc_allocator::dataset::read_jsonl(&path);
    let _ = ttc_allocator::prompt_kind::read_prompts(path.to_str().expect("a UTF-8 path"));
    let _ = ttc_allocator::calibrate::read_labels(&path);
});
