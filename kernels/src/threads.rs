//! The one CPU thread pool: rayon's global pool, which candle's own CPU operations use too, so
//! no two pools spin against each other. Sized once, before first use.
//!
//! A forward pass at batch size 1 is a few hundred short parallel sections. Handed to rayon
//! one by one, each section waits for a sleeping worker to wake, which on a VM can take as
//! long as the section itself.
//! [`with_team`] therefore holds the pool's other threads for the length of one forward pass:
//! they spin on an atomic work counter, and [`parallel_for`] hands them each section at the
//! cost of a few atomic operations (llama.cpp's CPU backend keeps its threads the same way).
//! Outside a team, `parallel_for` is rayon's `for_each`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Physical cores (hyper-threads share one core's SIMD units, so they add little here).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    #[cfg(target_os = "linux")]
    {
        let mut cores = std::collections::BTreeSet::new();
        for cpu in 0..logical {
            let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
            let core = std::fs::read_to_string(format!("{base}/core_id"));
            let pkg = std::fs::read_to_string(format!("{base}/physical_package_id"));
            match (core, pkg) {
                (Ok(c), Ok(p)) => {
                    cores.insert((p.trim().to_string(), c.trim().to_string()));
                }
                _ => return logical,
            }
        }
        if !cores.is_empty() {
            return cores.len();
        }
    }
    logical
}

/// Sizes the global pool to `threads` (default: the physical cores). Returns the size in use:
/// if the pool was already built, its size stays.
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(physical_cores).max(1);
    // candle sizes its own parallel work by RAYON_NUM_THREADS; keep the two in agreement.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() || threads.is_some() {
        // SAFETY (of intent): called at start-up, before other threads read the environment.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}

/// Threads in the pool.
pub fn current() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the pool with the other threads held as a team ([`with_team`]):
/// one hand-off per forward pass instead of one per parallel kernel.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        with_team(f)
    } else {
        rayon::scope(|_| with_team(f))
    }
}

/// Task-count and index fields of the team's state word: `epoch | tasks | next`.
const FIELD_BITS: u32 = 20;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
/// Idle polls before a team member starts yielding its core.
const SPIN_POLLS: u32 = 1 << 14;

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The threads of one forward pass and the section they are working on.
struct Team {
    /// `epoch << 40 | tasks << 20 | next`: one word, so that a claim (a compare-exchange on it)
    /// can only succeed for a task of the section it read.
    state: AtomicU64,
    /// The current section's body: points at a `Task` on the publishing thread's stack.
    job: AtomicPtr<()>,
    done: AtomicUsize,
    stop: AtomicBool,
}

thread_local! {
    /// The team this thread leads, while it leads one and is not inside one of its tasks.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Counts one claimed task as done when dropped, so that a task that panics still lets its
/// section end (on a follower the panic then reaches `with_team`'s scope, which re-raises it
/// on the leader once the team stops).
struct TaskDone<'a>(&'a AtomicUsize);

impl Drop for TaskDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Ends a section on the leader, on return or while unwinding from a task that panicked:
/// claims every task still unclaimed (so none starts), then waits until the tasks already
/// claimed are done. Until then the section's `Task` and the caller's data it borrows must
/// stay alive, and an unwinding leader would otherwise free them under running tasks.
struct SectionEnd<'a> {
    team: &'a Team,
    tasks: usize,
}

impl Drop for SectionEnd<'_> {
    fn drop(&mut self) {
        let team = self.team;
        loop {
            let s = team.state.load(Ordering::Acquire);
            let (tasks, next) = ((s >> FIELD_BITS) & FIELD_MASK, s & FIELD_MASK);
            if next >= tasks {
                break;
            }
            // `next = tasks`: the rest are claimed, and counted done, without running.
            if team
                .state
                .compare_exchange_weak(s, s + (tasks - next), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                team.done
                    .fetch_add((tasks - next) as usize, Ordering::Release);
                break;
            }
        }
        while team.done.load(Ordering::Acquire) < self.tasks {
            std::hint::spin_loop();
        }
    }
}

impl Team {
    /// Claims and runs tasks of the current section until none is left to claim.
    fn work(&self) -> bool {
        let mut ran = false;
        loop {
            let s = self.state.load(Ordering::Acquire);
            let (tasks, next) = ((s >> FIELD_BITS) & FIELD_MASK, s & FIELD_MASK);
            if next >= tasks {
                return ran;
            }
            if self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let _done = TaskDone(&self.done);
                // Read after the claim, not before: the claim succeeded on the current
                // section's state (whatever its epoch, even one that wrapped around to the
                // value read above), and that section cannot end before `_done` counts this
                // task, so `job` is its job. The Acquire claim reads the state the leader
                // published (Release) after storing `job`.
                let job = self.job.load(Ordering::Acquire) as *const Task;
                // SAFETY: `job` points at the `Task` that `section` holds on the leader's
                // stack; `section` does not return, nor unwind (`SectionEnd`), until `done`
                // reaches `tasks`, which needs this task's `_done`; the task's body outlives
                // the section likewise (it is the leader's `parallel_for` argument).
                unsafe { (*job)(next as usize) };
                ran = true;
            }
        }
    }

    fn follow(&self) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.work() {
                idle = 0;
            } else if idle < SPIN_POLLS {
                idle += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `tasks` (at most `FIELD_MASK`) tasks of `f` with the team; returns, or unwinds
    /// if a task panicked on this thread, only once every task that started has finished.
    fn section(&self, tasks: usize, f: Task) {
        let job: *const Task = &f;
        self.job.store(job as *mut (), Ordering::Release);
        self.done.store(0, Ordering::Relaxed);
        let epoch = (self.state.load(Ordering::Relaxed) >> (2 * FIELD_BITS)) + 1;
        self.state.store(
            epoch << (2 * FIELD_BITS) | (tasks as u64) << FIELD_BITS,
            Ordering::Release,
        );
        // Declared after `f`'s address was published and dropped before `f`: waits for the
        // followers running it, on return and on unwinding alike.
        let _end = SectionEnd { team: self, tasks };
        self.work();
    }
}

/// Runs `f` with the pool's other threads held as a team (see the module's notes), so that
/// the [`parallel_for`] sections it runs start without waking anyone. Call it on a pool thread
/// ([`on_pool`]); elsewhere, or with one thread, it just runs `f`.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1
        || rayon::current_thread_index().is_none()
        || !LEADING.with(|l| l.get().is_null())
    {
        return f();
    }
    let team = Team {
        state: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    };
    struct Release<'a>(&'a Team);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            LEADING.with(|l| l.set(std::ptr::null()));
            self.0.stop.store(true, Ordering::Release);
        }
    }
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| team.follow());
        }
        LEADING.with(|l| l.set(&team));
        let _release = Release(&team);
        f()
    })
}

/// Runs `f(0..tasks)`, spread over the leading team's threads, or over rayon's pool.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let team = LEADING.with(|l| l.get());
    if team.is_null() || tasks as u64 > FIELD_MASK {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: `LEADING` is non-null only between `with_team` setting it to its `Team` (on
    // this thread's stack, alive until `with_team`'s scope ends) and its `Release` guard
    // clearing it, on this thread only (a thread-local).
    let team = unsafe { &*team };
    // A task that itself calls `parallel_for` runs that section alone: the team is busy.
    LEADING.with(|l| l.set(std::ptr::null()));
    team.section(tasks, f);
    LEADING.with(|l| l.set(team));
}
