//! The event history in memory, bounded: each node keeps its last `boots_per_node` boots (a boot begins as
//! [`NodeStatus::apply`] says), and the events of a log file that rotated out are dropped with it.
//!
//! Sticky events survive both: a node's first `init-done` it reported itself (the init-done barrier reads
//! it), so neither reboots of the first master nor rotation ever close the barrier. The writer copies the
//! sticky events to the head of each new log file; [`History::is_sticky_copy`] tells the loader to skip the
//! copies it has already seen.

use std::collections::{HashMap, VecDeque};

use super::event::{Event, Source};
use super::node::NodeStatus;
use crate::config::MacAddr;

/// The stage whose first node report is kept for good.
pub const STICKY_STAGE: &str = "init-done";

/// One event in memory with where it sits: `seq` orders every event; `generation` names the log file it was
/// written to (the live file has the highest).
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    generation: u64,
    ev: Event,
}

/// Where a node's boots begin (the `seq` of each kept boot's first event) and its state machine.
#[derive(Debug)]
struct Track {
    status: NodeStatus,
    boot_starts: VecDeque<u64>,
}

/// The bounded history.
#[derive(Debug)]
pub struct History {
    entries: Vec<Entry>,
    next_seq: u64,
    tracks: HashMap<MacAddr, Track>,
    sticky: HashMap<MacAddr, Event>,
    boots_per_node: usize,
    pruned: u64,
}

fn is_sticky_kind(ev: &Event) -> bool {
    ev.stage == STICKY_STAGE && ev.source == Source::Node
}

impl History {
    /// An empty history keeping `boots_per_node` boots of each node (at least 1).
    pub fn new(boots_per_node: u32) -> Self {
        History {
            entries: Vec::new(),
            next_seq: 0,
            tracks: HashMap::new(),
            sticky: HashMap::new(),
            boots_per_node: boots_per_node.max(1) as usize,
            pruned: 0,
        }
    }

    /// Whether `ev` is a copy of a sticky event already kept (the head of a newer log file).
    pub fn is_sticky_copy(&self, ev: &Event) -> bool {
        self.sticky.get(&ev.mac) == Some(ev)
    }

    fn keep(sticky: &HashMap<MacAddr, Event>, e: &Entry) -> bool {
        sticky.get(&e.ev.mac) == Some(&e.ev)
    }

    /// Adds an event written to log file `generation`; drops the node's boots beyond the bound.
    pub fn push(&mut self, ev: Event, generation: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if is_sticky_kind(&ev) && !self.sticky.contains_key(&ev.mac) {
            self.sticky.insert(ev.mac, ev.clone());
        }
        let mac = ev.mac;
        let t = self.tracks.entry(mac).or_insert_with(|| Track {
            status: NodeStatus::new(mac, None),
            boot_starts: VecDeque::new(),
        });
        let before = t.status.boot;
        t.status.apply(&ev);
        if t.status.boot != before {
            t.boot_starts.push_back(seq);
        }
        // The tracker only needs the current boot: its past boots are not kept.
        t.status.previous.clear();
        self.entries.push(Entry {
            seq,
            generation,
            ev,
        });
        if t.boot_starts.len() > self.boots_per_node {
            while t.boot_starts.len() > self.boots_per_node {
                t.boot_starts.pop_front();
            }
            let cutoff = t.boot_starts[0];
            let before = self.entries.len();
            let sticky = &self.sticky;
            self.entries
                .retain(|e| e.ev.mac != mac || e.seq >= cutoff || Self::keep(sticky, e));
            self.pruned += (before - self.entries.len()) as u64;
        }
    }

    /// Drops every event of log files up to `generation` (they rotated out), except sticky ones. Returns how
    /// many were dropped.
    pub fn drop_generations_upto(&mut self, generation: u64) -> usize {
        let before = self.entries.len();
        let sticky = &self.sticky;
        self.entries
            .retain(|e| e.generation > generation || Self::keep(sticky, e));
        before - self.entries.len()
    }

    /// The sticky events, by MAC.
    pub fn sticky(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.sticky.values().cloned().collect();
        v.sort_by_key(|e| (e.at_ms, e.mac));
        v
    }

    /// Every event kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.entries.iter().map(|e| &e.ev)
    }

    /// How many events are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Events dropped because their node had more boots than the bound.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(mac: &str, at: u64, stage: &str, source: Source) -> Event {
        Event {
            at_ms: at,
            mac: mac.parse().unwrap(),
            stage: stage.into(),
            detail: String::new(),
            source,
        }
    }

    #[test]
    fn keeps_the_last_boots_of_each_node_and_the_first_init_done() {
        let (m, w) = ("52:54:00:77:00:11", "52:54:00:77:00:21");
        let mut h = History::new(2);
        h.push(ev(w, 0, "dhcp-offer", Source::Server), 0);
        for boot in 0..5u64 {
            let t = 1000 * boot;
            h.push(ev(m, t, "dhcp-offer", Source::Server), 0);
            h.push(ev(m, t + 1, "kernel", Source::Server), 0);
            h.push(ev(m, t + 2, "init-done", Source::Node), 0);
        }
        let of_m: Vec<&Event> = h.events().filter(|e| e.mac.to_string() == m).collect();
        // The first init-done, then boots 4 and 5 (3 events each).
        assert_eq!(of_m.len(), 1 + 2 * 3, "{of_m:?}");
        assert_eq!((of_m[0].stage.as_str(), of_m[0].at_ms), ("init-done", 2));
        assert_eq!(of_m[1].at_ms, 3000);
        assert_eq!(h.pruned(), 3 * 3 - 1);
        assert_eq!(h.events().filter(|e| e.mac.to_string() == w).count(), 1);
        let b = super::super::node::compute(&h.events().cloned().collect::<Vec<_>>(), &[], 10);
        let n = b.iter().find(|n| n.mac.to_string() == m).unwrap();
        // The two boots kept, after the first init-done kept alone (it reads as one earlier boot).
        assert_eq!(n.boot, 3);
    }

    #[test]
    fn rotation_drops_old_generations_but_not_sticky_events() {
        let m = "52:54:00:77:00:11";
        let mut h = History::new(10);
        h.push(ev(m, 1, "init-done", Source::Node), 0);
        h.push(ev(m, 2, "joined", Source::Node), 0);
        h.push(ev(m, 3, "joined", Source::Node), 1);
        assert_eq!(h.drop_generations_upto(0), 1);
        let left: Vec<u64> = h.events().map(|e| e.at_ms).collect();
        assert_eq!(left, vec![1, 3]);
        assert!(h.is_sticky_copy(&ev(m, 1, "init-done", Source::Node)));
        assert!(!h.is_sticky_copy(&ev(m, 9, "init-done", Source::Node)));
    }
}
