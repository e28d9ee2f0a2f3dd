//! A small persistent thread pool for the forward pass.
//!
//! A decode step runs a few hundred tiny parallel regions (one per mat-vec), so the
//! cost of starting a region matters more than anything else here: spawning threads
//! or boxing closures per region would cost more than the work. Workers spin briefly
//! on a generation counter, then sleep on a condvar; the calling thread takes part in
//! the work, so a pool of `n` threads has `n - 1` workers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job of the current region: a type-erased `&(dyn Fn(usize) + Sync)`.
/// It is only dereferenced between publication and the completion barrier, while the
/// caller of [`ThreadPool::run`] keeps the closure alive.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`, and `run` does not return before every worker has
// finished with it (see the `done` barrier).
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

struct Shared {
    generation: AtomicUsize,
    job: Mutex<Option<(JobPtr, usize)>>,
    next_task: AtomicUsize,
    done: AtomicUsize,
    /// Workers holding the current job pointer; changed only under the `job` lock.
    active: AtomicUsize,
    quit: AtomicBool,
    sleeping: Mutex<usize>,
    wake: Condvar,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    /// Serialises `run` calls from different threads (e.g. tests sharing a model).
    region: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

/// Spins before a worker goes to sleep (roughly tens of microseconds).
const SPIN_ITERS: usize = 20_000;

impl ThreadPool {
    /// A pool that runs regions on `n_threads` threads in all (the caller included).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            next_task: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("tokenwise-worker-{i}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("failed to spawn a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            region: Mutex::new(()),
            workers,
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(task)` for every task in `0..n_tasks`, spread over the pool's threads,
    /// and returns when all calls have returned.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            for t in 0..n_tasks {
                f(t);
            }
            return;
        }
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime; it outlives the region because we wait
        // for `done == n_tasks` below before returning.
        let ptr: *const (dyn Fn(usize) + Sync) = f;
        let ptr: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(ptr) };
        // One region at a time: the pool has a single job slot and task counter.
        let _region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        // Reset the counters *before* the job becomes visible: a worker that saw an
        // older generation late may pick the job up as soon as it is published.
        s.next_task.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((JobPtr(ptr), n_tasks));
        s.generation.fetch_add(1, Ordering::Release);
        {
            let sleeping = s.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            if *sleeping > 0 {
                s.wake.notify_all();
            }
        }
        // The caller works too.
        run_tasks(s, f, n_tasks);
        while s.done.load(Ordering::Acquire) < n_tasks {
            std::hint::spin_loop();
        }
        // Retract the job, then wait for every worker that picked it up to let go of it,
        // so no late worker can run this closure against the next region's counters.
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        while s.active.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
    }
}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), n_tasks: usize) {
    loop {
        let t = s.next_task.fetch_add(1, Ordering::Relaxed);
        if t >= n_tasks {
            break;
        }
        f(t);
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker_loop(s: &Shared) {
    let mut seen = s.generation.load(Ordering::Acquire);
    loop {
        // Wait for a new generation: spin first, then sleep.
        let mut spins = 0;
        loop {
            if s.quit.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                let mut sleeping = s.sleeping.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation.load(Ordering::Acquire) == seen && !s.quit.load(Ordering::Acquire) {
                    *sleeping += 1;
                    sleeping = s.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
                    *sleeping -= 1;
                }
                spins = 0;
            }
        }
        let job = {
            let guard = s.job.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_some() {
                s.active.fetch_add(1, Ordering::AcqRel);
            }
            *guard
        };
        if let Some((JobPtr(ptr), n_tasks)) = job {
            // SAFETY: see `JobPtr`; the caller is blocked in `run` until `active` drops to 0.
            let f = unsafe { &*ptr };
            run_tasks(s, f, n_tasks);
            s.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        {
            let _guard = self
                .shared
                .sleeping
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        }
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = std::sync::Arc::new(ThreadPool::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let hits: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(16, &|t| {
                            hits[t].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("no task ran twice or was skipped");
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sum = AtomicUsize::new(0);
        pool.run(10, &|t| {
            sum.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
