//! What makes a run the same whatever ran before it in the process.
//!
//! Tokio numbers tasks from one process-wide counter, and a current-thread
//! runtime keeps its tasks in four lists chosen by `id % 4`. When turmoil
//! crashes a host it drops that host's runtime, which shuts the tasks down
//! list by list: the order in which a crashed node's connections close
//! depended on where the counter stood when the run began, that is on the
//! seeds (and the parallel tests) that ran before. Seed 3695 run after
//! seeds 3600–3694 diverged at its first broker crash for that reason.
//!
//! [`isolated`] runs one seed at a time in the process and starts it with
//! the counter where a fresh process has it (`1 mod 4`), so a seed run in a
//! sequence, in a test beside others, or alone gives the same trace.

use std::sync::Mutex;

/// Tasks per list selector of a current-thread runtime
/// (`OwnedTasks::new(1)`: `1.next_power_of_two() * 4` lists).
const TASK_LISTS: u64 = 4;

/// Held for a whole run: tasks spawned by another run in between would
/// move the counter.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `run` alone in the process, with tokio's task ids starting as in a
/// fresh process (modulo [`TASK_LISTS`]).
pub fn isolated<T>(run: impl FnOnce() -> T) -> T {
    // A run that panicked (a failing seed in a test) leaves nothing behind
    // that the next one reads: the guard only orders runs.
    let _alone = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    align_task_ids();
    run()
}

/// Spawns empty tasks until the next task id is `1 mod TASK_LISTS`.
fn align_task_ids() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    for _ in 0..TASK_LISTS {
        let id = task_id(&runtime.spawn(async {}));
        if id.is_none_or(|id| (id + 1) % TASK_LISTS == 1) {
            return;
        }
    }
}

/// The number of a task id (its `Display`).
fn task_id(handle: &tokio::task::JoinHandle<()>) -> Option<u64> {
    handle.id().to_string().parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{TASK_LISTS, isolated, task_id};

    /// Whatever was spawned before, the first task of an isolated run has
    /// an id of 1 mod 4.
    #[test]
    fn a_run_starts_with_the_task_ids_of_a_fresh_process() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for before in 0..6 {
            for _ in 0..before {
                drop(runtime.spawn(async {}));
            }
            let first = isolated(|| task_id(&runtime.spawn(async {})).unwrap());
            assert_eq!(first % TASK_LISTS, 1, "after {before} spawns");
        }
    }
}
