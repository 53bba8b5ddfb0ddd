//! Weighted-fair time slicing of one GPU among VMs.
//!
//! GPU work (launches, copies, memsets) runs one command at a time per GPU. The GPU belongs to
//! one VM at a time for a time slice: while it does, that VM's commands run as they come; the
//! slice ends when it has lasted `time_slice` and another VM is waiting, or when its VM has
//! submitted nothing for `anticipation` (a synchronous client needs a round trip between two
//! commands; without waiting for it, strict alternation would ignore the weights). The next
//! slice goes to the waiting VM with the least virtual time, the GPU time it was charged
//! divided by its weight (start-time fair queueing), so over time each busy VM gets GPU time in
//! proportion to its weight. A VM is charged the time its commands ran, not the slack it was
//! held the GPU for. A VM that becomes busy again starts no lower than the busy VMs'
//! least virtual time, so idling earns no credit. A single command is never interrupted; the
//! VM's execution time limit bounds a launch (see dispatch).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Scheduler {
    time_slice: Duration,
    anticipation: Duration,
    st: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    entities: HashMap<u64, Entity>,
    owner: Option<Slice>,
    /// A command is running.
    running: bool,
    /// The ticket allowed to run next (taken by its waiter).
    granted: Option<u64>,
    next_ticket: u64,
    /// The virtual time of the last slice granted.
    vclock: f64,
    busy: Duration,
}

#[derive(Default)]
struct Entity {
    /// GPU nanoseconds charged / weight.
    vtime: f64,
    weight: u32,
    waiting: VecDeque<u64>,
    /// When its last command finished.
    last_done: Option<Instant>,
}

/// A VM idle for this many time slices is no longer owed GPU time it did not get.
const IDLE_SLICES: u32 = 5;

struct Slice {
    vm: u64,
    start: Instant,
    /// When its last command finished (or the slice started).
    last_done: Instant,
}

/// Why a wait for the GPU ended without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// The right to run one command; dropping it frees the GPU.
pub struct Grant<'s> {
    sched: &'s Scheduler,
    pub waited: Duration,
    pub started: Instant,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    pub fn new(time_slice: Duration, anticipation: Duration) -> Scheduler {
        Scheduler { time_slice, anticipation, st: Mutex::default(), cv: Condvar::new() }
    }

    /// Waits for the GPU for one command of `vm` (scheduling weight `weight`). `abandon` is
    /// polled whenever the waiter wakes (see `wake`): true gives up the wait.
    pub fn acquire(&self, vm: u64, weight: u32, abandon: &dyn Fn() -> bool) -> Result<Grant<'_>, Abandoned> {
        let asked = Instant::now();
        let mut st = lock(&self.st);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let floor = st.active_floor();
        let owner = st.owner.as_ref().map(|s| s.vm);
        let e = st.entities.entry(vm).or_default();
        e.weight = weight.max(1);
        if e.waiting.is_empty() && owner != Some(vm) && e.last_done.is_none_or(|t| asked.duration_since(t) > self.time_slice * IDLE_SLICES) {
            // Busy again after a real pause: no credit for the time spent idle. (A pause of a
            // round trip or a descheduled client thread keeps what the VM is owed.)
            e.vtime = e.vtime.max(floor);
        }
        e.waiting.push_back(ticket);
        loop {
            let now = Instant::now();
            let hold_until = self.dispatch(&mut st, now);
            if st.granted == Some(ticket) {
                st.granted = None;
                st.running = true;
                return Ok(Grant { sched: self, waited: now - asked, started: now });
            }
            if st.granted.is_some() {
                // Another waiter's turn: it may be asleep.
                self.cv.notify_all();
            }
            if abandon() {
                if let Some(e) = st.entities.get_mut(&vm) {
                    e.waiting.retain(|&t| t != ticket);
                }
                self.cv.notify_all();
                return Err(Abandoned);
            }
            st = match hold_until {
                Some(t) => self.cv.wait_timeout(st, t.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0,
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Wakes every waiter so that it polls its `abandon` (eviction, settings changed).
    pub fn wake(&self) {
        let _st = lock(&self.st);
        self.cv.notify_all();
    }

    /// Commands waiting for this GPU, per VM.
    pub fn queue_depths(&self) -> HashMap<u64, usize> {
        lock(&self.st).entities.iter().map(|(&vm, e)| (vm, e.waiting.len())).collect()
    }

    /// Time commands ran on this GPU.
    pub fn busy(&self) -> Duration {
        lock(&self.st).busy
    }

    /// Charges `vm` GPU time measured after its commands ran (an asynchronous GPU's kernels):
    /// its virtual time grows as if the commands had taken that long.
    pub fn charge(&self, vm: u64, ran: Duration) {
        let mut st = lock(&self.st);
        st.busy += ran;
        if let Some(e) = st.entities.get_mut(&vm) {
            e.vtime += ran.as_nanos() as f64 / e.weight.max(1) as f64;
        }
    }

    /// Forget a VM that no longer exists.
    pub fn remove(&self, vm: u64) {
        let mut st = lock(&self.st);
        if st.entities.get(&vm).is_some_and(|e| e.waiting.is_empty()) && st.owner.as_ref().is_none_or(|s| s.vm != vm) {
            st.entities.remove(&vm);
        }
    }

    /// Decides who runs next if the GPU is free; returns when a held GPU must be looked at again.
    fn dispatch(&self, st: &mut State, now: Instant) -> Option<Instant> {
        if st.running || st.granted.is_some() {
            return None;
        }
        if let Some(slice) = &st.owner {
            let vm = slice.vm;
            let own_waiting = st.entities.get(&vm).is_some_and(|e| !e.waiting.is_empty());
            let others_min = st.entities.iter().filter(|(&v, e)| v != vm && !e.waiting.is_empty()).map(|(_, e)| e.vtime).min_by(f64::total_cmp);
            let others_waiting = others_min.is_some();
            // A VM that got the GPU while one owed more time was away gives it back early.
            let own_vtime = st.entities.get(&vm).map_or(0.0, |e| e.vtime);
            let ahead = others_min.is_some_and(|m| own_vtime > m + self.time_slice.as_nanos() as f64);
            let slice_over = ahead || now.duration_since(slice.start) >= self.time_slice;
            let anticipating = now.duration_since(slice.last_done) < self.anticipation;
            if own_waiting && (!others_waiting || !slice_over) {
                st.granted = st.entities.get_mut(&vm).and_then(|e| e.waiting.pop_front());
                return None;
            }
            if !others_waiting {
                return None;
            }
            if !own_waiting && !slice_over && anticipating {
                return Some(slice.last_done + self.anticipation);
            }
            st.owner = None;
        }
        let next = st
            .entities
            .iter()
            .filter(|(_, e)| !e.waiting.is_empty())
            .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime).then(a.1.waiting[0].cmp(&b.1.waiting[0])))
            .map(|(&vm, e)| (vm, e.vtime));
        if let Some((vm, vtime)) = next {
            st.vclock = vtime;
            st.owner = Some(Slice { vm, start: now, last_done: now });
            st.granted = st.entities.get_mut(&vm).and_then(|e| e.waiting.pop_front());
        }
        None
    }

    fn release(&self, ran: Duration) {
        let mut st = lock(&self.st);
        let now = Instant::now();
        st.running = false;
        st.busy += ran;
        if let Some(s) = st.owner.as_mut() {
            s.last_done = now;
            let vm = s.vm;
            if let Some(e) = st.entities.get_mut(&vm) {
                e.vtime += ran.as_nanos() as f64 / e.weight.max(1) as f64;
                e.last_done = Some(now);
            }
        }
        self.cv.notify_all();
    }
}

impl State {
    /// The least virtual time of the busy VMs (owner or waiting), or the clock of the last grant.
    fn active_floor(&self) -> f64 {
        let owner = self.owner.as_ref().map(|s| s.vm);
        self.entities
            .iter()
            .filter(|(&v, e)| !e.waiting.is_empty() || Some(v) == owner)
            .map(|(_, e)| e.vtime)
            .min_by(f64::total_cmp)
            .unwrap_or(self.vclock)
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        self.sched.release(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Busy VMs get GPU time in proportion to their weights. Each VM has two synchronous
    /// clients (one command at a time, each `cost` long), so that it always has work waiting
    /// even when a client thread is slow to get a CPU.
    fn shares(weights: &[u32], cost: Duration, run_for: Duration) -> Vec<f64> {
        let s = Arc::new(Scheduler::new(Duration::from_millis(10), Duration::from_millis(2)));
        let stop = Arc::new(AtomicBool::new(false));
        let got: Vec<Arc<AtomicU64>> = weights.iter().map(|_| Arc::default()).collect();
        let threads: Vec<_> = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| [(i, w), (i, w)])
            .map(|(i, w)| {
                let (s, stop, got) = (s.clone(), stop.clone(), got[i].clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let g = s.acquire(i as u64, w, &|| false).unwrap();
                        let t = Instant::now();
                        while t.elapsed() < cost {
                            std::hint::spin_loop();
                        }
                        got.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        drop(g);
                    }
                })
            })
            .collect();
        std::thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = got.iter().map(|g| g.load(Ordering::Relaxed)).sum();
        got.iter().map(|g| g.load(Ordering::Relaxed) as f64 / total as f64).collect()
    }

    #[test]
    fn busy_vms_share_by_weight() {
        let got = shares(&[1, 3], Duration::from_millis(1), Duration::from_millis(1500));
        assert!((got[1] / got[0] - 3.0).abs() < 0.3, "shares {got:?} are not 1:3");
    }

    #[test]
    fn a_waiter_can_give_up() {
        let s = Scheduler::new(Duration::from_millis(10), Duration::from_millis(2));
        let g = s.acquire(1, 1, &|| false).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let h = sc.spawn(|| s.acquire(2, 1, &|| stop.load(Ordering::Relaxed)).map(|_| ()));
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
            s.wake();
            assert_eq!(h.join().unwrap(), Err(Abandoned));
        });
        drop(g);
        assert_eq!(s.queue_depths().get(&2), Some(&0));
        let _g = s.acquire(2, 1, &|| false).unwrap();
    }
}
