//! Crafted GGUF headers, through the real binary: each is refused with one `error:` line and
//! exit status 1, never a panic, an abort or an allocation of what the header claims. The
//! files are written byte by byte here, as an attacker would.

use std::process::Command;

/// A GGUF v3 header: metadata entries (key, type id, value bytes), then tensor infos
/// (name, dims, type id, offset), then `data` after 32-byte alignment.
fn gguf(
    kvs: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, &[u64], u32, u64)],
    data: usize,
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    for (k, ty, v) in kvs {
        string(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

fn str_value(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn arch() -> (&'static str, u32, Vec<u8>) {
    ("general.architecture", 8, str_value("llama"))
}

#[test]
fn crafted_headers_get_one_line_and_exit_one() {
    let dir = std::env::temp_dir().join(format!("ttc-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let huge_len = u64::MAX / 2;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "alignment zero",
            gguf(
                &[
                    arch(),
                    ("general.alignment", 4, 0u32.to_le_bytes().to_vec()),
                ],
                &[],
                0,
            ),
            "alignment",
        ),
        (
            "alignment three",
            gguf(
                &[
                    arch(),
                    ("general.alignment", 4, 3u32.to_le_bytes().to_vec()),
                ],
                &[],
                0,
            ),
            "alignment",
        ),
        (
            "string longer than the file",
            gguf(
                &[("general.architecture", 8, huge_len.to_le_bytes().to_vec())],
                &[],
                0,
            ),
            "bytes",
        ),
        (
            "array of 2^40 strings",
            gguf(
                &[
                    arch(),
                    (
                        "tokenizer.ggml.tokens",
                        9,
                        [
                            8u32.to_le_bytes().to_vec(),
                            (1u64 << 40).to_le_bytes().to_vec(),
                        ]
                        .concat(),
                    ),
                ],
                &[],
                0,
            ),
            "elements",
        ),
        (
            "dimensions that overflow",
            gguf(
                &[arch()],
                &[("token_embd.weight", &[1 << 32, 1 << 32, 1 << 8], 0, 0)],
                64,
            ),
            "elements",
        ),
        (
            "a matrix with no rows",
            gguf(&[arch()], &[("output.weight", &[576, 0], 0, 0)], 64),
            "dimension of 0",
        ),
        (
            "a tensor beyond the file",
            gguf(&[arch()], &[("output.weight", &[576, 4096], 8, 0)], 64),
            "ends past",
        ),
        (
            "an unknown tensor type",
            gguf(&[arch()], &[("output.weight", &[32], 77, 0)], 64),
            "unknown type",
        ),
        (
            "too many tensors claimed",
            {
                let mut b = gguf(&[arch()], &[], 0);
                b[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes());
                b
            },
            "tensors",
        ),
    ];
    for (name, bytes, says) in cases {
        let path = dir.join(format!("{}.gguf", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        for cmd in [&["tokenize", "--model"][..], &["--model"][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
                .args(cmd)
                .arg(&path)
                .arg("hello")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} ({cmd:?}): {err}");
            assert_eq!(err.lines().count(), 1, "{name}: {err}");
            assert!(
                err.starts_with("error: ") && !err.contains("internal error"),
                "{name}: {err}"
            );
            assert!(err.contains(says), "{name}: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chat templates that would exhaust memory or time (a string doubled in a loop; repetitions of
/// a 100 MB string at render time; constant folding of twenty at compile time), given with
/// --chat-template-file: one `error:` line, exit 1, within seconds and bounded memory.
#[cfg(target_os = "linux")]
#[test]
fn runaway_chat_templates_get_one_line_and_exit_one() {
    let dir = std::env::temp_dir().join(format!("ttc-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "doubling",
            "{% set ns = namespace(s='x') %}{% for i in range(48) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}".to_string(),
            &["MiB rendering"][..],
        ),
        (
            "repeating",
            "{% for i in range(1000) %}{% set s = messages[0].content[:1] * 99999999 %}{% endfor %}".to_string(),
            &["longer than"],
        ),
        ("folding", "{{ 'x' * 99999999 }}".repeat(20), &["MiB compiling"]),
        (
            "endless",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
                .to_string(),
            // Out of fuel, or stopped by the sandbox's clock first on a slow machine.
            &["fuel", "longer than"],
        ),
    ];
    for (name, source, says) in cases {
        let path = dir.join(format!("{name}.jinja"));
        std::fs::write(&path, source).unwrap();
        let t0 = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
            .arg("--chat-template-file")
            .arg(&path)
            .args(["--max-tokens", "4", "hello"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("chat template"),
            "{name}: {err}"
        );
        assert!(says.iter().any(|s| err.contains(s)), "{name}: {err}");
        assert!(t0.elapsed().as_secs() < 30, "{name}");
    }
    // The largest process any of them ran (ttc-run, or a sandbox it forked and waited for).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for getrusage(2) to fill.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    assert!(
        usage.ru_maxrss < 1 << 20,
        "a process reached {} KiB",
        usage.ru_maxrss
    );
    let _ = std::fs::remove_dir_all(&dir);
}
