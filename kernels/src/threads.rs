//! The one CPU thread pool: rayon's global pool, which candle's own CPU operations use too, so
//! no two pools spin against each other. Sized once, before first use.

/// Physical cores (hyper-threads share one core's SIMD units, so they add little here).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
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
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    rayon::current_num_threads()
}

/// Threads in the pool.
pub fn current() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the pool, so that the parallel kernels it calls share the work with
/// it rather than handing each one off and waiting to be woken.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
