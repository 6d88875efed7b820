//! Running a computation over untrusted input where its time and memory are bounded from
//! outside: in a child process (`fork`), with an alarm and an address-space limit, returning
//! its result through a pipe.
//!
//! Why a process: a chat template is a program read from the model file, and minijinja bounds
//! its instructions (fuel) and our output, but not what one instruction costs. A template that
//! doubles a string in a loop (`{% set ns.s = ns.s ~ ns.s %}`) needs a hundred bytes and a few
//! hundred instructions to ask for terabytes; one that repeats a 100 MB string (minijinja's cap
//! for `*`) in straight-line code renders for minutes in bounded memory (found by the
//! `chat_template` fuzz target). Neither can be stopped from inside: Rust's allocation failure
//! aborts, and a thread cannot be killed. A child can: when it runs out of time or memory it
//! dies, and the caller gets an error. Sandboxes for untrusted documents (browsers' renderers,
//! image decoders) do the same.
//!
//! The child is forked from a process that may run other threads; it only runs the given
//! computation, whose allocations glibc's malloc keeps safe across `fork`, writes one message
//! and leaves with `_exit` (no destructors, no atexit handlers of the parent's). Its standard
//! error goes to /dev/null, and the signals a fatal error raises are reset to their default,
//! so a handler the parent installed (a fuzzer's crash handler) does not run in it.
//!
//! On other platforms than Linux and macOS the computation runs in this process, unbounded.

use std::time::Duration;

/// How long and how much memory (beyond what the process already maps) the child may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub time: Duration,
    pub memory_bytes: u64,
}

/// Why a sandboxed computation gave no result of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past `Limits::time`.
    Time,
    /// It died, which with the limits set means it ran out of memory (an allocation failed).
    Memory,
    /// No child could be started or heard from (fork or pipe failed, or it sent nothing).
    Unavailable(String),
}

/// How one child ended, when it gave no result: a failure, or stopped by the clock while it
/// was waiting rather than computing, which [`run`] tries once more.
#[cfg(any(target_os = "linux", target_os = "macos"))]
enum Stop {
    Failed(Failure),
    Stalled,
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Self::Failed(f)
    }
}

/// Runs `f` in a child process under `limits`; its `Ok` text or `Err` message comes back.
///
/// A child forked from a process with other threads can find a lock taken at the instant of
/// the fork by a thread it does not have, and wait on it forever: seen in this project's test
/// binaries, where a one-line template compile ran out of its 5 s about every other run while
/// other tests ran beside it. A child stopped by the clock having used less than a quarter of
/// its time on the CPU was waiting, not computing (a runaway template computes), so it is run
/// once more in a fresh child.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn run<F>(limits: Limits, f: F) -> Result<Result<String, String>, Failure>
where
    F: Fn() -> Result<String, String>,
{
    let again = |stop| match stop {
        Stop::Failed(f) => f,
        Stop::Stalled => Failure::Time,
    };
    match run_once(limits, &f) {
        Err(Stop::Stalled) => run_once(limits, &f).map_err(again),
        other => other.map_err(again),
    }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn run_once<F>(limits: Limits, f: &F) -> Result<Result<String, String>, Stop>
where
    F: Fn() -> Result<String, String>,
{
    use std::io::Read;
    use std::os::fd::FromRawFd;

    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(
            Failure::Unavailable(format!("pipe: {}", std::io::Error::last_os_error())).into(),
        );
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: fork(2) has no preconditions; the child below only calls async-signal-safe
    // functions and the computation, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: both descriptors came from pipe(2) above and are closed once.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        return Err(Failure::Unavailable(format!("fork: {e}")).into());
    }
    if pid == 0 {
        // SAFETY: in the child; `read_fd` is ours to close.
        unsafe { libc::close(read_fd) };
        close_inherited_descriptors(write_fd);
        child_limits(limits);
        // A panic must not unwind into the parent's code, which the child also holds.
        let message = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(text)) => [&[0u8][..], text.as_bytes()].concat(),
            Ok(Err(e)) => [&[1u8][..], e.as_bytes()].concat(),
            // SAFETY: leaving the child at once, as below.
            Err(_) => unsafe { libc::_exit(101) },
        };
        let mut written = 0;
        while written < message.len() {
            // SAFETY: the range is inside `message`; `write_fd` is the pipe's open write end.
            let n = unsafe {
                libc::write(
                    write_fd,
                    message[written..].as_ptr().cast(),
                    message.len() - written,
                )
            };
            if n <= 0 {
                break;
            }
            written += n as usize;
        }
        // SAFETY: leaving the child without running the parent's destructors or handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent's copy of the write end is closed once, so the read below ends when
    // the child exits.
    unsafe { libc::close(write_fd) };
    // SAFETY: `read_fd` is the pipe's open read end, owned by this File from here on.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(read_fd) };
    let mut message = Vec::new();
    let read = pipe.read_to_end(&mut message);
    drop(pipe);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4(2) to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child; `status` and `usage` are valid to write.
    while unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    if libc::WIFSIGNALED(status) {
        if libc::WTERMSIG(status) != libc::SIGALRM {
            return Err(Failure::Memory.into());
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
        return Err(if cpu < limits.time.as_secs_f64() / 4.0 {
            Stop::Stalled
        } else {
            Failure::Time.into()
        });
    }
    read.map_err(|e| Failure::Unavailable(format!("reading the child's result: {e}")))?;
    match message.split_first() {
        Some((0, text)) => Ok(Ok(String::from_utf8_lossy(text).into_owned())),
        Some((_, text)) => Ok(Err(String::from_utf8_lossy(text).into_owned())),
        None => Err(Failure::Unavailable("the computation failed without a result".into()).into()),
    }
}

/// In the child: closes every descriptor above standard error but `keep`. The child holds
/// copies of whatever the parent had open, the write ends of other sandboxes' pipes among
/// them, and a parent reading its pipe to the end would wait for this child too.
#[cfg(target_os = "linux")]
fn close_inherited_descriptors(keep: i32) {
    // SAFETY: close_range(2) on this process's own descriptor table; `keep` stays open.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

#[cfg(target_os = "macos")]
fn close_inherited_descriptors(_keep: i32) {}

/// In the child: quiet standard error, default fatal signals, the alarm and the memory cap.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn child_limits(limits: Limits) {
    // SAFETY: plain system calls on this process; the path is NUL-terminated.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 2);
            libc::close(null);
        }
        for sig in [
            libc::SIGALRM,
            libc::SIGABRT,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::alarm(limits.time.as_secs().max(1) as u32);
    }
    if let Some(mapped) = mapped_bytes() {
        let cap = mapped.saturating_add(limits.memory_bytes);
        let rl = libc::rlimit {
            rlim_cur: cap as libc::rlim_t,
            rlim_max: cap as libc::rlim_t,
        };
        // SAFETY: `rl` is a valid rlimit for setrlimit(2) to read.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) };
    }
}

/// The process's virtual size: what the address-space limit is counted from.
#[cfg(target_os = "linux")]
fn mapped_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// macOS does not enforce RLIMIT_AS: the time limit alone bounds the child there.
#[cfg(target_os = "macos")]
fn mapped_bytes() -> Option<u64> {
    None
}

/// Elsewhere `f` runs in this process.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn run<F>(_limits: Limits, f: F) -> Result<Result<String, String>, Failure>
where
    F: Fn() -> Result<String, String>,
{
    Ok(f())
}

#[cfg(all(test, any(target_os = "linux", target_os = "macos")))]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        time: Duration::from_secs(1),
        memory_bytes: 64 << 20,
    };

    #[test]
    fn results_and_errors_come_back_from_the_child() {
        assert_eq!(
            run(LIMITS, || Ok("a\0b".repeat(40_000))),
            Ok(Ok("a\0b".repeat(40_000)))
        );
        assert_eq!(run(LIMITS, || Err("no".into())), Ok(Err("no".to_string())));
        assert!(matches!(
            run(LIMITS, || panic!("in the child")),
            Err(Failure::Unavailable(_))
        ));
    }

    #[test]
    fn a_child_past_its_time_or_memory_is_stopped() {
        let t0 = std::time::Instant::now();
        assert_eq!(
            run(LIMITS, || loop {
                std::hint::black_box(0);
            }),
            Err(Failure::Time)
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        #[cfg(target_os = "linux")]
        assert_eq!(
            run(LIMITS, || {
                let mut s = String::from("x");
                loop {
                    s = s.repeat(2);
                }
            }),
            Err(Failure::Memory)
        );
    }
}
