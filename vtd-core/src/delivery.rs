//! Ordered delivery of the unit's events and MSIs to observers and the interrupt sink.
//!
//! The unit produces events and MSIs while it holds its state lock, but must not call foreign
//! code (observers, the VMM's interrupt sink) under that lock: an observer may call back into
//! the unit (a nested binder re-reads a context entry, a test injects a fault), which would
//! deadlock. So the work is split:
//!
//! 1. Under the state lock the producer takes a [`Ticket`] from the [`Tickets`] counter kept in
//!    the unit's state, which fixes the batch's place in the unit's order.
//! 2. After releasing the lock it calls [`Delivery::deliver`], which waits until every earlier
//!    ticket was served, then hands the batch to the observers and the sink.
//!
//! Invariants:
//!
//! - **In order.** Batches reach observers in ticket order, which is the order the unit
//!   produced them, whatever threads produced them; events inside a batch keep their order.
//! - **Waits complete after publication.** The queue holds a wait descriptor back while
//!   batches produced before it are still in flight (see `crate::qi`), so the guest never
//!   sees a wait complete before observers saw the invalidations it orders. "Before it" is a
//!   mark, not [`Delivery::all_served`]: once the batch carrying what preceded the wait got its
//!   ticket, the wait waits for [`Delivery::served_up_to`] that ticket and no later one, so
//!   batches other threads produce meanwhile (register writes, DMA faults) cannot put it off.
//! - **Re-entrancy.** While a thread delivers, work its observers cause (a register write, an
//!   injected fault) is not given a ticket of its own (that ticket could never be served: the
//!   delivering thread would wait for itself); [`Delivery::defer_nested`] queues it and the
//!   delivering thread hands it out right after the event being handled, in the same delivery.
//! - **A panicking observer or sink does not stop the unit.** Each observer and sink call is
//!   run under `catch_unwind`; a panic is logged and the delivery goes on with the next
//!   observer and event (the panicking observer stays subscribed). Independently of that, a
//!   drop guard serves the ticket on every way out of [`Delivery::deliver`], so even a panic
//!   outside those calls cannot leave later tickets waiting forever. Catching (rather than
//!   only serving the ticket and letting the panic continue) is chosen because the panic would
//!   otherwise unwind through a vCPU's MMIO write and take the VM down for an observer's bug,
//!   and the other observers would miss the rest of the batch. With `panic = "abort"` none of
//!   this applies: the process ends at the panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::ThreadId;

use crate::events::VtdEvent;
use crate::irq::Msi;
use crate::sync::{Condvar, Mutex};

/// A batch's place in the delivery order.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a ticket that is not delivered blocks every later one"]
pub(crate) struct Ticket(u64);

/// Hands out tickets; lives in the unit's state so tickets are taken under its lock, in the
/// order the batches were produced.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    next: u64,
}

impl Tickets {
    /// The next place in the order.
    pub(crate) fn take(&mut self) -> Ticket {
        let t = Ticket(self.next);
        self.next += 1;
        t
    }

    /// How many tickets were taken so far (a mark for [`Delivery::served_up_to`]).
    pub(crate) fn taken(&self) -> u64 {
        self.next
    }
}

/// Events and MSIs delivered together.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) events: Vec<VtdEvent>,
    pub(crate) msis: Vec<Msi>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.msis.is_empty()
    }
}

/// Serves tickets in order (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Tickets served so far: the ticket with this number is the one allowed to deliver.
    served: Mutex<u64>,
    turn: Condvar,
    /// The thread delivering right now, if any.
    owner: Mutex<Option<ThreadId>>,
    /// Work produced by observers during the current delivery.
    nested: Mutex<Batch>,
}

impl Delivery {
    /// Whether this thread is delivering right now (its observers are being called).
    pub(crate) fn delivering_here(&self) -> bool {
        *self.owner.lock() == Some(std::thread::current().id())
    }

    /// Whether every ticket handed out by `tickets` was served.
    pub(crate) fn all_served(&self, tickets: &Tickets) -> bool {
        self.served_up_to(tickets.next)
    }

    /// Whether the first `mark` tickets (those taken before [`Tickets::taken`] returned
    /// `mark`) were all served, whatever was taken since.
    pub(crate) fn served_up_to(&self, mark: u64) -> bool {
        *self.served.lock() >= mark
    }

    /// Queues work an observer caused during the current delivery (only on the delivering
    /// thread): it is delivered after the event being handled, by the same delivery.
    pub(crate) fn defer_nested(&self, batch: Batch) {
        debug_assert!(self.delivering_here());
        let mut nested = self.nested.lock();
        nested.events.extend(batch.events);
        nested.msis.extend(batch.msis);
    }

    /// Waits for `ticket`'s turn, then sends the batch's MSIs to `send_msi` and its events to
    /// `publish`, then what observers caused meanwhile, until nothing is left. Panics of
    /// `send_msi` and `publish` are caught and logged (see the module doc); `publish` is
    /// expected to contain each observer's panic itself ([`contain_panic`]) so one observer's
    /// panic does not hide the event from the others.
    pub(crate) fn deliver(
        &self,
        ticket: Ticket,
        batch: Batch,
        send_msi: impl Fn(Msi),
        publish: impl Fn(&[VtdEvent]),
    ) {
        let mut served = self.served.lock();
        while *served != ticket.0 {
            served = self.turn.wait(served);
        }
        drop(served);
        *self.owner.lock() = Some(std::thread::current().id());
        let _serve = ServeOnDrop(self);
        let mut batch = batch;
        loop {
            for msi in batch.msis {
                contain_panic("interrupt sink", || send_msi(msi));
            }
            if !batch.events.is_empty() {
                contain_panic("observer", || publish(&batch.events));
            }
            batch = std::mem::take(&mut *self.nested.lock());
            if batch.is_empty() {
                break;
            }
        }
    }
}

/// Ends a delivery however `deliver` is left: clears the owner and lets the next ticket go.
struct ServeOnDrop<'a>(&'a Delivery);

impl Drop for ServeOnDrop<'_> {
    fn drop(&mut self) {
        *self.0.owner.lock() = None;
        *self.0.served.lock() += 1;
        self.0.turn.notify_all();
    }
}

/// Runs foreign code; a panic is logged and goes no further.
pub(crate) fn contain_panic(what: &str, f: impl FnOnce()) {
    // Unwind safety: what the closure touches of the unit is the batch being delivered (owned,
    // read-only here); the foreign code's own state is its business.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string payload)");
        tracing::error!(target: "vtd::event", what, message, "panic contained; delivery goes on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn msi(data: u32) -> Msi {
        Msi {
            address: 0xfee0_0000,
            data,
        }
    }

    fn batch(data: u32) -> Batch {
        Batch {
            events: vec![VtdEvent::TranslationEnabled(data % 2 == 0)],
            msis: vec![msi(data)],
        }
    }

    #[test]
    fn tickets_are_served_in_order_whatever_thread_delivers() {
        let delivery = Arc::new(Delivery::default());
        let mut tickets = Tickets::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        // Take the tickets in order, deliver them from threads started in reverse order.
        let taken: Vec<_> = (0..8).map(|i| (i, tickets.take())).collect();
        for (i, ticket) in taken.into_iter().rev() {
            let (delivery, seen) = (delivery.clone(), seen.clone());
            handles.push(std::thread::spawn(move || {
                delivery.deliver(ticket, batch(i), |m| seen.lock().push(m.data), |_| {});
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*seen.lock(), (0..8).collect::<Vec<_>>());
        assert!(delivery.all_served(&tickets));
    }

    #[test]
    fn msis_go_before_the_events_of_their_batch() {
        let delivery = Delivery::default();
        let mut tickets = Tickets::default();
        let order = Mutex::new(Vec::new());
        delivery.deliver(
            tickets.take(),
            batch(1),
            |_| order.lock().push("msi"),
            |_| order.lock().push("event"),
        );
        assert_eq!(*order.lock(), ["msi", "event"]);
    }

    #[test]
    fn work_caused_during_delivery_follows_the_event_being_handled() {
        let delivery = Delivery::default();
        let mut tickets = Tickets::default();
        let seen = Mutex::new(Vec::new());
        let first = Batch {
            events: vec![
                VtdEvent::TranslationEnabled(true),
                VtdEvent::TranslationEnabled(false),
            ],
            msis: Vec::new(),
        };
        delivery.deliver(
            tickets.take(),
            first,
            |_| {},
            |events| {
                for e in events {
                    assert!(delivery.delivering_here());
                    seen.lock().push(e.clone());
                    if *e == VtdEvent::TranslationEnabled(true) {
                        delivery.defer_nested(Batch {
                            events: vec![VtdEvent::Reset],
                            msis: Vec::new(),
                        });
                    }
                }
            },
        );
        // The nested event comes after the batch's own events (they were handed out already),
        // in the same delivery, and the delivery is over afterwards.
        assert_eq!(
            *seen.lock(),
            [
                VtdEvent::TranslationEnabled(true),
                VtdEvent::TranslationEnabled(false),
                VtdEvent::Reset
            ]
        );
        assert!(!delivery.delivering_here());
        assert!(delivery.all_served(&tickets));
    }

    #[test]
    fn a_panicking_observer_or_sink_neither_blocks_later_tickets_nor_stops_the_batch() {
        let delivery = Arc::new(Delivery::default());
        let mut tickets = Tickets::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let two_events = Batch {
            events: vec![VtdEvent::Reset, VtdEvent::TranslationEnabled(true)],
            msis: vec![msi(7)],
        };
        delivery.deliver(
            tickets.take(),
            two_events,
            |_| panic!("sink bug"),
            |events| {
                for e in events {
                    contain_panic("observer", || {
                        if *e == VtdEvent::Reset {
                            panic!("observer bug");
                        }
                        seen.lock().push(e.clone());
                    });
                }
            },
        );
        assert_eq!(*seen.lock(), [VtdEvent::TranslationEnabled(true)]);
        // The next ticket, from another thread, is served.
        let ticket = tickets.take();
        let (d, s) = (delivery.clone(), seen.clone());
        std::thread::spawn(move || {
            d.deliver(ticket, batch(2), |_| {}, |e| s.lock().extend_from_slice(e))
        })
        .join()
        .unwrap();
        assert_eq!(seen.lock().len(), 2);
        assert!(delivery.all_served(&tickets));
    }

    #[test]
    fn the_serve_guard_lets_the_next_ticket_go_when_a_delivery_unwinds() {
        // The guard `deliver` holds: whatever unwinds out of a delivery (a panic outside the
        // contained calls), the ticket counts as served and the owner is cleared.
        let delivery = Arc::new(Delivery::default());
        let mut tickets = Tickets::default();
        let Ticket(_) = tickets.take();
        let d = delivery.clone();
        let r = std::thread::spawn(move || {
            *d.owner.lock() = Some(std::thread::current().id());
            let _serve = ServeOnDrop(&d);
            panic!("unwinding out of a delivery");
        })
        .join();
        assert!(r.is_err());
        assert!(delivery.all_served(&tickets));
        assert!(delivery.owner.lock().is_none());
        let second = tickets.take();
        delivery.deliver(second, batch(0), |_| {}, |_| {});
        assert!(delivery.all_served(&tickets));
    }
}
