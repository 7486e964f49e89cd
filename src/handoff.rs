//! New deliveries attempted by the host that stores them, with no claim of their own.
//!
//! The dispatcher offers the handlers whose new deliveries may skip the outbox's claim: no
//! rate, no failure in a row, not paused, nothing older waiting, no claimed delivery
//! waiting for a permit. The ingest writer takes free permits of those handlers before
//! each transaction, claims as many of the group's new deliveries in it
//! ([`crate::store::History::ingest_claiming`]), and hands them back to the dispatcher with
//! a permit each; the permits it did not use go back at once. A claimed delivery is a
//! `running` row like any other: if the daemon dies before its attempt, the lease sweep
//! or the next start returns it to pending. Deliveries left pending wake the dispatcher.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::handler::Delivery;
use crate::store::FirstClaim;

/// Batches of claimed deliveries waiting for the dispatcher (one per ingest commit).
const CAPACITY: usize = 64;

/// Shared by the dispatcher and the ingest writer.
pub struct Handoff {
    offers: Mutex<Vec<Offer>>,
    first: mpsc::Sender<Vec<FirstAttempt>>,
    /// The dispatcher's wake, poked when new deliveries were left pending.
    pub wake: Arc<Notify>,
}

/// A handler whose new deliveries the ingest may claim.
pub struct Offer {
    /// The handler.
    pub handler: String,
    /// Its permits (attempts in flight).
    pub permits: Arc<Semaphore>,
    /// How long a claimed delivery stays leased.
    pub lease: Duration,
}

/// A delivery claimed as it was stored, with its handler's permit.
pub struct FirstAttempt {
    /// The handler.
    pub handler: String,
    /// The delivery (attempt 1).
    pub delivery: Delivery,
    /// Held from before the claim until the attempt ends.
    pub permit: OwnedSemaphorePermit,
    /// The claim's lease.
    pub lease: Duration,
}

/// Permits taken for one transaction: its wants, and the permits behind them.
pub struct Taken {
    /// For [`crate::store::History::ingest_claiming`].
    pub wants: Vec<FirstClaim>,
    permits: Vec<Vec<OwnedSemaphorePermit>>,
}

impl Handoff {
    /// A handoff with nothing offered, waking the dispatcher with `wake`, and the
    /// dispatcher's end of it.
    pub fn new(wake: Arc<Notify>) -> (Arc<Handoff>, mpsc::Receiver<Vec<FirstAttempt>>) {
        let (first, rx) = mpsc::channel(CAPACITY);
        (Arc::new(Handoff { offers: Mutex::new(Vec::new()), first, wake }), rx)
    }

    /// Replaces the offers (the dispatcher, after each change; empty to withdraw them).
    pub fn offer(&self, offers: Vec<Offer>) {
        *self.offers.lock().unwrap_or_else(|e| e.into_inner()) = offers;
    }

    /// Takes up to `max` free permits of each offered handler.
    pub fn take(&self, max: usize) -> Taken {
        let offers = self.offers.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Taken { wants: Vec::new(), permits: Vec::new() };
        for offer in offers.iter() {
            let permits: Vec<OwnedSemaphorePermit> =
                std::iter::from_fn(|| offer.permits.clone().try_acquire_owned().ok()).take(max).collect();
            if !permits.is_empty() {
                taken.wants.push(FirstClaim {
                    handler: offer.handler.clone(),
                    limit: permits.len(),
                    lease: offer.lease,
                });
                taken.permits.push(permits);
            }
        }
        taken
    }

    /// Hands `claimed` (each with the index of its want in `taken`) to the dispatcher, a
    /// permit each; releases the permits left over. A dispatcher that has stopped drops
    /// them: their rows stay `running` until the next start or a lease sweep requeues them.
    pub async fn hand_over(&self, mut taken: Taken, claimed: Vec<(usize, Delivery)>) {
        if claimed.is_empty() {
            return;
        }
        let firsts = claimed
            .into_iter()
            .filter_map(|(i, delivery)| {
                let permit = taken.permits.get_mut(i)?.pop()?;
                let want = &taken.wants[i];
                Some(FirstAttempt { handler: want.handler.clone(), delivery, permit, lease: want.lease })
            })
            .collect();
        drop(taken);
        let _ = self.first.send(firsts).await;
    }
}
