//! The reliable-callback queue itself, without any I/O: events wait in `ready`, a pull
//! makes them invisible under a fresh handle for the visibility timeout, a confirm of a
//! live handle removes them, and an expired handle puts its event back for redelivery
//! under a new handle. Time is passed in, so the rules are unit-tested without sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

/// One event handed out by a pull.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The fresh `msgHandle`.
    pub handle: String,
    /// The `eventContent` JSON text, exactly as enqueued.
    pub content: Arc<str>,
}

/// Why a ConfirmEvent was refused; nothing in the call was confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRefused {
    /// Handles that are unknown or whose visibility timeout has passed.
    pub bad_handles: Vec<String>,
}

/// Counters of what the queue has done, as reported by `/_emulator/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Events ever enqueued.
    pub enqueued: u64,
    /// Events handed out by pulls, redeliveries included.
    pub delivered: u64,
    /// Deliveries of an event that had been delivered before.
    pub redelivered: u64,
    /// Events confirmed (removed from the queue).
    pub confirmed: u64,
    /// Events enqueued and not yet confirmed.
    pub outstanding: u64,
    /// Events delivered and waiting for a confirm.
    pub in_flight: u64,
    /// Handles that expired before being confirmed.
    pub expired_handles: u64,
    /// ConfirmEvent calls refused because of a bad or expired handle.
    pub confirms_refused: u64,
    /// The longest time between a pull and the confirm of one of its handles, in ms.
    pub max_confirm_latency_ms: u64,
}

impl QueueStats {
    /// Adds another queue's counters to these (the latency is the larger of the two).
    pub fn add(&mut self, other: &QueueStats) {
        self.enqueued += other.enqueued;
        self.delivered += other.delivered;
        self.redelivered += other.redelivered;
        self.confirmed += other.confirmed;
        self.outstanding += other.outstanding;
        self.in_flight += other.in_flight;
        self.expired_handles += other.expired_handles;
        self.confirms_refused += other.confirms_refused;
        self.max_confirm_latency_ms = self.max_confirm_latency_ms.max(other.max_confirm_latency_ms);
    }
}

struct InFlight {
    event: u64,
    pulled_at: Instant,
}

struct Stored {
    content: Arc<str>,
    deliveries: u32,
    enqueued_at: Instant,
}

/// The queue state. Not thread-safe by itself; the server keeps it behind a mutex.
pub struct Queue {
    visibility: Duration,
    max_batch: usize,
    next_id: u64,
    events: HashMap<u64, Stored>,
    ready: VecDeque<u64>,
    in_flight: HashMap<String, InFlight>,
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
    confirmed_log: Vec<Arc<str>>,
    enqueue_to_confirm: Vec<Duration>,
    stats: QueueStats,
}

impl Queue {
    /// An empty queue.
    pub fn new(visibility: Duration, max_batch: usize) -> Self {
        Queue {
            visibility,
            max_batch: max_batch.max(1),
            next_id: 0,
            events: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            expiries: BinaryHeap::new(),
            confirmed_log: Vec::new(),
            enqueue_to_confirm: Vec::new(),
            stats: QueueStats::default(),
        }
    }

    /// Changes the visibility timeout for handles issued from now on.
    pub fn set_visibility(&mut self, visibility: Duration) {
        self.visibility = visibility;
    }

    /// Adds one event (its `eventContent` JSON text).
    pub fn enqueue(&mut self, content: Arc<str>, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        self.events.insert(id, Stored { content, deliveries: 0, enqueued_at: now });
        self.ready.push_back(id);
        self.stats.enqueued += 1;
    }

    /// Whether a pull at `now` would return something.
    pub fn has_ready(&mut self, now: Instant) -> bool {
        self.expire(now);
        !self.ready.is_empty()
    }

    /// When the earliest in-flight handle expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }

    /// Hands out up to `max_batch` events, each under a fresh handle.
    pub fn pull(&mut self, now: Instant) -> Vec<Delivery> {
        self.expire(now);
        let mut out = Vec::new();
        while out.len() < self.max_batch {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(stored) = self.events.get_mut(&id) else { continue };
            stored.deliveries += 1;
            if stored.deliveries > 1 {
                self.stats.redelivered += 1;
            }
            self.stats.delivered += 1;
            let handle = new_handle();
            self.in_flight.insert(handle.clone(), InFlight { event: id, pulled_at: now });
            self.expiries.push(Reverse((now + self.visibility, handle.clone())));
            out.push(Delivery { handle, content: stored.content.clone() });
        }
        out
    }

    /// Confirms a batch: all handles must be live, or nothing is confirmed.
    pub fn confirm(&mut self, now: Instant, handles: &[String]) -> Result<(), ConfirmRefused> {
        self.expire(now);
        let mut seen = HashSet::new();
        let bad: Vec<String> = handles
            .iter()
            .filter(|h| !self.in_flight.contains_key(h.as_str()) || !seen.insert(h.as_str()))
            .cloned()
            .collect();
        if !bad.is_empty() || handles.is_empty() {
            self.stats.confirms_refused += 1;
            return Err(ConfirmRefused { bad_handles: bad });
        }
        for handle in handles {
            let flight = self.in_flight.remove(handle).expect("checked above");
            let latency = now.saturating_duration_since(flight.pulled_at).as_millis() as u64;
            self.stats.max_confirm_latency_ms = self.stats.max_confirm_latency_ms.max(latency);
            if let Some(stored) = self.events.remove(&flight.event) {
                self.confirmed_log.push(stored.content);
                self.enqueue_to_confirm.push(now.saturating_duration_since(stored.enqueued_at));
                self.stats.confirmed += 1;
            }
        }
        Ok(())
    }

    /// True if `handle` is in flight here (live or not yet expired by a pull or confirm).
    pub fn holds(&self, handle: &str) -> bool {
        self.in_flight.contains_key(handle)
    }

    /// Counters, with the gauges filled in.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            outstanding: self.events.len() as u64,
            in_flight: self.in_flight.len() as u64,
            ..self.stats.clone()
        }
    }

    /// The content of every event confirmed so far, in confirm order.
    pub fn confirmed(&self) -> Vec<Arc<str>> {
        self.confirmed_log.clone()
    }

    /// For every confirmed event, the time from its enqueue to its confirm.
    pub fn enqueue_to_confirm(&self) -> Vec<Duration> {
        self.enqueue_to_confirm.clone()
    }

    /// Puts events whose handle expired at or before `now` back in line.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, handle)) = self.expiries.pop().expect("peeked");
            if let Some(flight) = self.in_flight.remove(&handle) {
                self.stats.expired_handles += 1;
                self.ready.push_back(flight.event);
            }
        }
    }
}

/// A handle shaped like Tencent's: opaque, unique, never reused.
fn new_handle() -> String {
    let mut rng = rand::thread_rng();
    format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with(n: usize) -> Queue {
        let mut q = Queue::new(Duration::from_secs(30), 16);
        for i in 0..n {
            q.enqueue(Arc::from(format!("{{\"n\":{i}}}")), Instant::now());
        }
        q
    }

    #[test]
    fn pull_returns_at_most_a_batch_with_unique_handles() {
        let mut q = queue_with(20);
        let now = Instant::now();
        let first = q.pull(now);
        assert_eq!(first.len(), 16);
        let handles: HashSet<_> = first.iter().map(|d| d.handle.clone()).collect();
        assert_eq!(handles.len(), 16);
        assert_eq!(q.pull(now).len(), 4);
        assert!(q.pull(now).is_empty());
    }

    #[test]
    fn confirm_removes_and_records() {
        let mut q = queue_with(2);
        let now = Instant::now();
        let got = q.pull(now);
        let handles: Vec<_> = got.iter().map(|d| d.handle.clone()).collect();
        q.confirm(now + Duration::from_millis(250), &handles).unwrap();
        let stats = q.stats();
        assert_eq!((stats.confirmed, stats.outstanding, stats.in_flight), (2, 0, 0));
        assert_eq!(stats.max_confirm_latency_ms, 250);
        assert_eq!(q.confirmed().len(), 2);
    }

    #[test]
    fn expired_handle_is_refused_and_event_redelivered_under_new_handle() {
        let mut q = queue_with(1);
        let t0 = Instant::now();
        let first = q.pull(t0);
        let later = t0 + Duration::from_secs(31);
        let err = q.confirm(later, &[first[0].handle.clone()]).unwrap_err();
        assert_eq!(err.bad_handles, vec![first[0].handle.clone()]);
        let second = q.pull(later);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].handle, first[0].handle);
        assert_eq!(second[0].content, first[0].content);
        let stats = q.stats();
        assert_eq!((stats.redelivered, stats.expired_handles, stats.confirms_refused), (1, 1, 1));
    }

    #[test]
    fn one_bad_handle_refuses_the_whole_batch() {
        let mut q = queue_with(2);
        let now = Instant::now();
        let got = q.pull(now);
        let batch = vec![got[0].handle.clone(), "nope".to_string()];
        assert!(q.confirm(now, &batch).is_err());
        assert_eq!(q.stats().confirmed, 0);
        assert!(q.confirm(now, &[got[0].handle.clone(), got[1].handle.clone()]).is_ok());
    }

    #[test]
    fn confirming_the_same_handle_twice_is_refused() {
        let mut q = queue_with(1);
        let now = Instant::now();
        let h = q.pull(now)[0].handle.clone();
        assert!(q.confirm(now, &[h.clone(), h.clone()]).is_err());
        assert!(q.confirm(now, std::slice::from_ref(&h)).is_ok());
        assert!(q.confirm(now, &[h]).is_err());
    }
}
