//! Concurrent fetching, folded in a fixed order: a bounded pool of blocking worker threads
//! (no async runtime) fetches and checks the round's updates while the aggregator's thread
//! folds each result in node-id order. The published bytes therefore never depend on which
//! fetch finished first, and memory stays bounded: a worker takes the next job only while
//! fewer than `window` results are fetched but not yet folded, so at most `window` models
//! (plus the one being folded) are held at once, whatever the fleet's size.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Result};

/// Where the workers and the folder stand.
struct Progress {
    /// The next job a worker will take.
    next: usize,
    /// Jobs folded so far (the folder waits for job `folded` next).
    folded: usize,
    /// Set when the folder stops early (an error): workers take no more jobs.
    stop: bool,
}

/// Runs `fetch` on every job with `workers` threads and hands each result to `fold`, in
/// job order, with at most `window` results waiting to be folded. `fold`'s first error
/// stops the workers (those mid-fetch finish their job) and is returned.
pub fn fetch_in_order<J, T, F, G>(jobs: &[J], workers: usize, window: usize, fetch: F, mut fold: G) -> Result<()>
where
    J: Sync,
    T: Send,
    F: Fn(&J) -> T + Sync,
    G: FnMut(usize, T) -> Result<()>,
{
    let workers = workers.clamp(1, jobs.len().max(1));
    let window = window.max(workers);
    let progress = Mutex::new(Progress { next: 0, folded: 0, stop: false });
    let turn = Condvar::new();
    let lock = || progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (sender, results) = mpsc::channel::<(usize, std::thread::Result<T>)>();
    std::thread::scope(|scope| {
        // However the folder leaves (done, an error, a panic in `fold`), no worker is left
        // waiting for room in the window: the scope could never end.
        let _release = Release { lock: &lock, turn: &turn };
        for _ in 0..workers {
            let sender = sender.clone();
            let (fetch, lock, turn) = (&fetch, &lock, &turn);
            scope.spawn(move || loop {
                let index = {
                    let mut p = lock();
                    while !p.stop && p.next < jobs.len() && p.next >= p.folded + window {
                        p = turn.wait(p).unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    if p.stop || p.next >= jobs.len() {
                        return;
                    }
                    p.next += 1;
                    p.next - 1
                };
                // A panicking fetch becomes that job's error: the folder, waiting for the job
                // in order, would otherwise wait forever while the window stays full. (The
                // packaged builds use panic = "abort": there a panic stops the process and
                // systemd restarts it, which loses nothing, as the chain is the state.)
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| fetch(&jobs[index])));
                if sender.send((index, result)).is_err() {
                    return;
                }
            });
        }
        drop(sender);
        let mut waiting: BTreeMap<usize, std::thread::Result<T>> = BTreeMap::new();
        let mut outcome = Ok(());
        for folded in 0..jobs.len() {
            let result = loop {
                if let Some(result) = waiting.remove(&folded) {
                    break Some(result);
                }
                match results.recv() {
                    Ok((index, result)) => {
                        waiting.insert(index, result);
                    }
                    Err(_) => break None,
                }
            };
            let step = match result {
                Some(Ok(result)) => fold(folded, result),
                Some(Err(panic)) => Err(anyhow!("fetching job {folded} panicked: {}", panic_message(&*panic))),
                None => Err(anyhow!("every fetch worker ended before job {folded} was fetched")),
            };
            let mut p = lock();
            p.folded = folded + 1;
            if let Err(err) = step {
                p.stop = true;
                outcome = Err(err);
            }
            turn.notify_all();
            drop(p);
            if outcome.is_err() {
                break;
            }
        }
        outcome
    })
}

/// Sets `stop` and wakes every waiting worker when dropped.
struct Release<'a, L: Fn() -> std::sync::MutexGuard<'a, Progress>> {
    lock: &'a L,
    turn: &'a Condvar,
}

impl<'a, L: Fn() -> std::sync::MutexGuard<'a, Progress>> Drop for Release<'a, L> {
    fn drop(&mut self) {
        (self.lock)().stop = true;
        self.turn.notify_all();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("a non-text panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn results_are_folded_in_job_order_whatever_order_they_finish_in() {
        let jobs: Vec<u64> = (0..40).collect();
        for workers in [1, 3, 8] {
            let mut order = Vec::new();
            fetch_in_order(
                &jobs,
                workers,
                2 * workers,
                // Later jobs finish first often: pseudo-random delays.
                |job| {
                    std::thread::sleep(Duration::from_millis((job * 7919) % 13));
                    job * 10
                },
                |index, value| {
                    assert_eq!(value, index as u64 * 10);
                    order.push(index);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(order, (0..40).collect::<Vec<_>>(), "{workers} workers");
        }
    }

    #[test]
    fn no_more_than_the_window_is_held_unfolded() {
        let jobs: Vec<usize> = (0..30).collect();
        let (fetched, folded, most) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
        fetch_in_order(
            &jobs,
            4,
            5,
            |_| {
                let held = fetched.fetch_add(1, Ordering::SeqCst) + 1 - folded.load(Ordering::SeqCst);
                most.fetch_max(held, Ordering::SeqCst);
            },
            |_, ()| {
                // A slow folder: the workers must wait for it, not run ahead.
                std::thread::sleep(Duration::from_millis(3));
                folded.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(fetched.load(Ordering::SeqCst), 30);
        assert!(most.load(Ordering::SeqCst) <= 5, "{} results were held at once", most.load(Ordering::SeqCst));
    }

    #[test]
    fn the_first_fold_error_stops_the_workers_and_is_returned() {
        let jobs: Vec<usize> = (0..100).collect();
        let fetched = AtomicUsize::new(0);
        let err = fetch_in_order(
            &jobs,
            2,
            4,
            |_| {
                fetched.fetch_add(1, Ordering::SeqCst);
            },
            |index, ()| if index == 3 { Err(anyhow!("bad job {index}")) } else { Ok(()) },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "bad job 3");
        assert!(fetched.load(Ordering::SeqCst) <= 3 + 1 + 4, "fetched {} after the error", fetched.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_fetch_is_an_error_not_a_hang() {
        let jobs: Vec<usize> = (0..5).collect();
        let mut folded = Vec::new();
        let err = fetch_in_order(
            &jobs,
            2,
            2,
            |job| assert_ne!(*job, 2, "fetch of job 2 fails"),
            |index, ()| {
                folded.push(index);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("fetching job 2 panicked"), "{err}");
        assert!(err.to_string().contains("fetch of job 2 fails"), "{err}");
        assert_eq!(folded, [0, 1]);
    }

    #[test]
    fn a_panicking_fold_ends_the_workers_and_the_panic_goes_on() {
        let jobs: Vec<usize> = (0..50).collect();
        let outcome = std::panic::catch_unwind(|| {
            fetch_in_order(&jobs, 3, 3, |_| (), |index, ()| if index == 1 { panic!("fold 1") } else { Ok(()) })
        });
        assert!(outcome.is_err());
    }

    #[test]
    fn no_jobs_is_nothing_to_do() {
        fetch_in_order(&Vec::<u8>::new(), 4, 8, |_| (), |_, ()| panic!("nothing to fold")).unwrap();
    }
}
