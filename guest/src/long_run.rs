//! 15. Long-run mode: the scheduler and the timer for minutes on end.
//!
//! The self-tests run for a fraction of a second; what goes wrong only slowly (a tick lost now
//! and then, a frame not given back, a counter that wraps) needs longer. With `long-run SECONDS`
//! on its command line the kernel starts a 1 ms tick and two `user_long_run` tasks, which count,
//! make system calls both ways and never yield, so that every switch between them is the
//! timer's doing, until SECONDS of TSC time have passed. Then it prints
//!
//! ```text
//! long-run: T ticks in M ms, tasks ran A and B times, lost L
//! frames: F free before the run, G after
//! ```
//!
//! T is the ticks that came in the M milliseconds from starting the tick to stopping it; A and B
//! the time slices each task got (how many times the scheduler switched to it); L the ticks
//! whose deadline went by unserved (timer.rs: deadlines are absolute, so T + L is M give or take
//! one). F and G must be equal: every frame of the tasks' address spaces comes back when they
//! exit. The kernel powers off as failed if they are not, or if a task found its system calls
//! answering wrongly; how many lost ticks are too many is the caller's call.

use paravirt_ops::{platform, time};

use crate::user::{self, Program};
use crate::{frames, println, task, timer};

/// The tick: 1 kHz, as Linux with HZ=1000.
const TICK_NS: u64 = 1_000_000;

pub fn run(seconds: u64) -> ! {
    let free_before = frames::free_frames();
    let (ticks_before, lost_before) = (timer::ticks(), timer::lost());
    let start = time::rdtsc();
    let until = start + seconds * 1000 * time::tsc_khz();
    timer::start(TICK_NS);
    let tasks = [
        user::spawn(Program::LongRun, until),
        user::spawn(Program::LongRun, until),
    ];
    task::wait_all();
    timer::stop();
    let ms = (time::rdtsc() - start) / time::tsc_khz();
    let ticks = timer::ticks() - ticks_before;
    let lost = timer::lost() - lost_before;
    let [(status_a, a), (status_b, b)] = tasks.map(task::reap);
    println!(
        "long-run: {ticks} ticks in {ms} ms, tasks ran {} and {} times, lost {lost}",
        a.runs, b.runs
    );
    let free_after = frames::free_frames();
    println!("frames: {free_before} free before the run, {free_after} after");
    if status_a != 0 || status_b != 0 {
        platform::power_off("teaching-guest: a long-run task saw a wrong answer", true)
    }
    if free_after != free_before {
        platform::power_off("teaching-guest: long-run leaked frames", true)
    }
    platform::power_off("teaching-guest: long-run done", false)
}
