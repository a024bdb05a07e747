//! Several trackers, so that none is a single point of failure.
//!
//! Each file maps to a *replica set*: the `k` trackers with the highest rendezvous score
//! for its name (a hash of the tracker's address and the name). Every node that lists the
//! same trackers computes the same set, with no coordination and no shared database; adding
//! or removing a tracker moves only the files whose set it enters or leaves.
//!
//! - An announce goes to every tracker of the file's set, at once; it succeeds if one
//!   acknowledges.
//! - A look-up asks the set in order, healthy trackers first, and goes on to the next while
//!   the owners found are fewer than wanted (a tracker that restarted knows only the owners
//!   that re-announced since), merging the answers.
//! - A search asks every tracker at once and merges the hits.
//! - A tracker that leaves a request unanswered through all its tries is *silent*: it is
//!   skipped (or asked last, when nothing else is left) until `retry_after` has passed,
//!   then asked again; the first answer makes it healthy again. Both changes are reported
//!   to the observer ([`TrackerSet::on_change`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::client::{Owners, TrackerClient};
use crate::error::{Error, Result};
use crate::key::NetworkKey;
use crate::messages::{Announce, ContentId, SearchHit};

/// How many trackers of the list hold each file, by default.
pub const DEFAULT_REPLICAS: usize = 2;

/// The most trackers a set may list.
pub const MAX_TRACKERS: usize = 16;

/// How long a silent tracker is skipped before it is asked again, by default.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A tracker going silent or answering again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerChange {
    /// The tracker left a request unanswered through every try; it is skipped for a while.
    Silent {
        /// The tracker's address.
        tracker: SocketAddr,
        /// What the request met, with its cause.
        error: String,
    },
    /// A silent tracker answered again.
    Back {
        /// The tracker's address.
        tracker: SocketAddr,
    },
}

/// How one tracker of a set is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerHealth {
    /// The tracker's address.
    pub addr: SocketAddr,
    /// Whether its last request was answered (or none was sent yet).
    pub up: bool,
    /// How many times it has gone silent.
    pub silences: u64,
}

/// What is told of every [`TrackerChange`].
type Observer = Arc<dyn Fn(TrackerChange) + Send + Sync>;

/// A list of trackers with a replica set per file, and the health of each.
///
/// Clones share the health and the address tokens, so any number of threads may use one
/// set; [`with_retries`](Self::with_retries) on a clone changes only that clone's tries.
#[derive(Clone)]
pub struct TrackerSet {
    members: Arc<[Member]>,
    /// The clients, in the members' order; cloned so tries can differ per clone.
    clients: Vec<TrackerClient>,
    replicas: usize,
    retry_after: Duration,
    observer: Option<Observer>,
}

/// The health of one tracker, shared by every clone of the set.
#[derive(Debug, Default)]
struct Member {
    state: Mutex<State>,
    silences: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Set while the tracker is silent: when it may be asked again.
    silent_until: Option<Instant>,
}

impl std::fmt::Debug for TrackerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerSet")
            .field("trackers", &self.addrs())
            .field("replicas", &self.replicas)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl TrackerSet {
    /// Creates a set of the trackers at `addrs`, each file held by `replicas` of them (all,
    /// when fewer are listed). Duplicates are listed once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `addrs` is empty, longer than [`MAX_TRACKERS`], or
    /// `replicas` is zero.
    pub fn new(addrs: &[SocketAddr], replicas: usize) -> Result<Self> {
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if !unique.contains(addr) {
                unique.push(*addr);
            }
        }
        if unique.is_empty() {
            return Err(Error::InvalidParameter("at least one tracker is needed"));
        }
        if unique.len() > MAX_TRACKERS {
            return Err(Error::InvalidParameter("at most 16 trackers may be listed"));
        }
        if replicas == 0 {
            return Err(Error::InvalidParameter(
                "each file needs at least one tracker",
            ));
        }
        Ok(Self {
            members: unique.iter().map(|_| Member::default()).collect(),
            clients: unique.into_iter().map(TrackerClient::new).collect(),
            replicas,
            retry_after: DEFAULT_RETRY_AFTER,
            observer: None,
        })
    }

    /// Seals every request under the network key, and believes only replies sealed under
    /// it, on every tracker.
    pub fn with_key(mut self, key: &NetworkKey) -> Self {
        self.clients = self.clients.into_iter().map(|c| c.with_key(key)).collect();
        self
    }

    /// Sets how many times each request is sent to one tracker and how long the first
    /// wait is (see [`TrackerClient::with_retries`]).
    pub fn with_retries(mut self, tries: u32, first_timeout: Duration) -> Self {
        self.clients = self
            .clients
            .into_iter()
            .map(|c| c.with_retries(tries, first_timeout))
            .collect();
        self
    }

    /// Sets how long a silent tracker is skipped before it is asked again.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Calls `observer` whenever a tracker goes silent or answers again. It runs on the
    /// thread that made the request, so it must be quick.
    pub fn on_change(mut self, observer: impl Fn(TrackerChange) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Returns every tracker's address, in the order given.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.clients.iter().map(TrackerClient::addr).collect()
    }

    /// Returns how each tracker is doing, in the order given.
    pub fn health(&self) -> Vec<TrackerHealth> {
        let now = Instant::now();
        self.clients
            .iter()
            .zip(self.members.iter())
            .map(|(client, member)| TrackerHealth {
                addr: client.addr(),
                up: !member.is_silent(now),
                silences: member.silences.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Returns the trackers that hold `file`, best first: the `replicas` highest
    /// rendezvous scores of the name. The same on every node that lists the same trackers.
    pub fn replicas_of(&self, file: &str) -> Vec<SocketAddr> {
        self.set_of(file)
            .into_iter()
            .map(|i| self.clients[i].addr())
            .collect()
    }

    /// Announces that this node owns a file to every tracker of its set, at once, and
    /// returns the re-announce interval the first to acknowledge asked for.
    ///
    /// # Errors
    ///
    /// The first tracker's error if none acknowledged.
    pub fn announce(&self, ann: &Announce) -> Result<Duration> {
        let order = self.ordered(self.set_of(&ann.file), false);
        let results = self.each(&order, |client| client.announce(ann.clone()));
        first_ok(results)
    }

    /// Asks for the owners of `file`; with `content`, of that content only. The set is
    /// asked in order, healthy trackers first; while the owners found are fewer than
    /// `numwant`, the next is asked too (for the content the first answer chose) and the
    /// answers merged.
    ///
    /// # Errors
    ///
    /// [`Error::NoOwners`] if every tracker that answered knows no owner, else the first
    /// tracker's error if none answered.
    pub fn need_content(
        &self,
        file: &str,
        numwant: u16,
        content: Option<ContentId>,
    ) -> Result<Owners> {
        let mut found: Option<Owners> = None;
        let mut first_error = None;
        let mut not_found = false;
        for i in self.ordered(self.set_of(file), true) {
            let pin = found.as_ref().map(|f| f.content).or(content);
            match self.ask(i, |client| client.need_content(file, numwant, pin)) {
                Ok(more) => match &mut found {
                    None => found = Some(more),
                    Some(found) => merge_owners(found, more),
                },
                Err(Error::NoOwners { .. }) => not_found = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            if found
                .as_ref()
                .is_some_and(|f| f.owners.len() >= usize::from(numwant))
            {
                break;
            }
        }
        match (found, first_error) {
            (Some(found), _) => Ok(found),
            (None, Some(e)) if !not_found => Err(e),
            _ => Err(Error::NoOwners { file: file.into() }),
        }
    }

    /// Returns the files whose names contain `pattern` (ignoring case) and their owners,
    /// from every tracker at once, merged: one hit per name and content.
    ///
    /// # Errors
    ///
    /// The first tracker's error if none answered.
    pub fn search(&self, pattern: &str) -> Result<Vec<SearchHit>> {
        let all: Vec<usize> = (0..self.clients.len()).collect();
        let order = self.ordered(all, false);
        let mut merged: Vec<SearchHit> = Vec::new();
        let mut index: HashMap<(String, ContentId), usize> = HashMap::new();
        let mut first_error = None;
        let mut answered = false;
        for result in self.each(&order, |client| client.search(pattern)) {
            match result {
                Ok(hits) => {
                    answered = true;
                    for hit in hits {
                        match index.get(&(hit.file.clone(), hit.content)) {
                            Some(&at) => merge_hit(&mut merged[at], hit),
                            None => {
                                index.insert((hit.file.clone(), hit.content), merged.len());
                                merged.push(hit);
                            }
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !answered => Err(e),
            _ => {
                merged.sort_by(|a, b| a.file.cmp(&b.file).then(a.content.cmp(&b.content)));
                Ok(merged)
            }
        }
    }

    /// Tells every tracker the node serving on `port` from this host has left.
    ///
    /// # Errors
    ///
    /// The first tracker's error if none acknowledged.
    pub fn exit(&self, port: u16) -> Result<()> {
        let all: Vec<usize> = (0..self.clients.len()).collect();
        let order = self.ordered(all, false);
        first_ok(self.each(&order, |client| client.exit(port)))
    }

    /// The indices of the trackers holding `file`, highest score first.
    fn set_of(&self, file: &str) -> Vec<usize> {
        let mut scored: Vec<(u64, usize)> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, client)| (score(client.addr(), file), i))
            .collect();
        scored.sort_by(|a, b| b.cmp(a));
        scored
            .into_iter()
            .take(self.replicas)
            .map(|(_, i)| i)
            .collect()
    }

    /// Orders `set` healthy first. Silent trackers come last when `keep_silent`, else are
    /// left out, unless none is healthy: then all are tried.
    fn ordered(&self, set: Vec<usize>, keep_silent: bool) -> Vec<usize> {
        let now = Instant::now();
        let (up, silent): (Vec<usize>, Vec<usize>) = set
            .into_iter()
            .partition(|&i| !self.members[i].is_silent(now));
        if up.is_empty() {
            return silent;
        }
        if keep_silent {
            up.into_iter().chain(silent).collect()
        } else {
            up
        }
    }

    /// Runs `request` on tracker `i`, recording whether it answered.
    fn ask<T>(&self, i: usize, request: impl FnOnce(&TrackerClient) -> Result<T>) -> Result<T> {
        let result = request(&self.clients[i]);
        self.record(i, result.as_ref().err());
        result
    }

    /// Runs `request` on every tracker of `order` at once; the results in that order.
    fn each<T: Send>(
        &self,
        order: &[usize],
        request: impl Fn(&TrackerClient) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        if let [only] = order {
            return vec![self.ask(*only, &request)];
        }
        std::thread::scope(|scope| {
            let request = &request;
            let running: Vec<_> = order
                .iter()
                .map(|&i| {
                    let spawned = std::thread::Builder::new()
                        .name("node-tracker".into())
                        .spawn_scoped(scope, move || self.ask(i, request));
                    (i, spawned)
                })
                .collect();
            running
                .into_iter()
                .map(|(i, spawned)| match spawned {
                    Ok(handle) => handle
                        .join()
                        .unwrap_or_else(|_| Err(Error::ThreadPanicked("node-tracker".into()))),
                    // No thread to spare: ask on this one.
                    Err(_) => self.ask(i, request),
                })
                .collect()
        })
    }

    /// Marks tracker `i` silent after a request it never answered, or healthy after any
    /// answer, telling the observer of a change.
    fn record(&self, i: usize, error: Option<&Error>) {
        let member = &self.members[i];
        let tracker = self.clients[i].addr();
        let silenced = error.filter(|e| is_silence(e));
        let change = {
            let mut state = member.state.lock();
            match (silenced, state.silent_until) {
                (Some(e), was) => {
                    state.silent_until = Some(Instant::now() + self.retry_after);
                    was.is_none().then(|| TrackerChange::Silent {
                        tracker,
                        error: crate::error::report(e),
                    })
                }
                (None, Some(_)) => {
                    state.silent_until = None;
                    Some(TrackerChange::Back { tracker })
                }
                (None, None) => None,
            }
        };
        if let Some(change) = change {
            if matches!(change, TrackerChange::Silent { .. }) {
                member.silences.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(observer) = &self.observer {
                observer(change);
            }
        }
    }
}

impl Member {
    /// Whether the tracker is silent and not yet due to be asked again.
    fn is_silent(&self, now: Instant) -> bool {
        self.state
            .lock()
            .silent_until
            .is_some_and(|until| now < until)
    }
}

/// Whether an error means the tracker did not answer at all (rather than refused).
fn is_silence(e: &Error) -> bool {
    matches!(
        e,
        Error::TrackerUnreachable { .. } | Error::TrackerIo { .. }
    )
}

/// The rendezvous score of `tracker` for `file`.
fn score(tracker: SocketAddr, file: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(tracker.to_string().as_bytes());
    hasher.update(&[0]);
    hasher.update(file.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The first success of `results`, else the first error.
fn first_ok<T>(results: Vec<Result<T>>) -> Result<T> {
    let mut first_error = None;
    for result in results {
        match result {
            Ok(value) => return Ok(value),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(Error::InvalidParameter("no tracker was asked")))
}

/// Adds the owners of `more` not already in `found`.
fn merge_owners(found: &mut Owners, more: Owners) {
    for owner in more.owners {
        if !found.owners.iter().any(|o| o.addr == owner.addr) {
            found.owners.push(owner);
        }
    }
    found.contents = found.contents.max(more.contents);
}

/// Adds the owners of `more` not already in `hit`; the count is the larger of the two.
fn merge_hit(hit: &mut SearchHit, more: SearchHit) {
    hit.owner_count = hit.owner_count.max(more.owner_count);
    for owner in more.owners {
        if !hit.owners.iter().any(|o| o.addr == owner.addr) {
            hit.owners.push(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_maps_to_the_same_trackers_whatever_order_they_are_listed_in() {
        let addrs: Vec<SocketAddr> = (0..5)
            .map(|i| format!("10.0.0.{i}:12340").parse().unwrap())
            .collect();
        let mut reversed = addrs.clone();
        reversed.reverse();
        let a = TrackerSet::new(&addrs, 3).unwrap();
        let b = TrackerSet::new(&reversed, 3).unwrap();
        let mut firsts = std::collections::HashSet::new();
        for n in 0..200 {
            let name = format!("f{n}");
            assert_eq!(a.replicas_of(&name), b.replicas_of(&name));
            firsts.insert(a.replicas_of(&name)[0]);
        }
        assert_eq!(firsts.len(), 5, "every tracker leads some files");
        // Removing one tracker moves only the files it held.
        let fewer = TrackerSet::new(&addrs[1..], 3).unwrap();
        for n in 0..200 {
            let name = format!("f{n}");
            let before = a.replicas_of(&name);
            if !before.contains(&addrs[0]) {
                assert_eq!(fewer.replicas_of(&name), before);
            }
        }
    }

    #[test]
    fn a_silent_tracker_is_skipped_then_asked_again_and_each_change_is_told_once() {
        let addrs: Vec<SocketAddr> =
            vec!["10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap()];
        let told = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&told);
        let set = TrackerSet::new(&addrs, 2)
            .unwrap()
            .with_retry_after(Duration::from_secs(3600))
            .on_change(move |c| seen.lock().push(c));
        let silence = Error::TrackerUnreachable {
            addr: addrs[0],
            tries: 2,
        };
        set.record(0, Some(&silence));
        set.record(0, Some(&silence));
        assert_eq!(set.ordered(vec![0, 1], false), vec![1]);
        assert_eq!(set.ordered(vec![0, 1], true), vec![1, 0]);
        // Nothing else left: the silent one is asked anyway.
        assert_eq!(set.ordered(vec![0], false), vec![0]);
        // A refusal is an answer: the tracker is alive.
        let refused = Error::TrackerRejected {
            addr: addrs[0],
            reason: "no".into(),
        };
        set.record(0, Some(&refused));
        assert_eq!(set.ordered(vec![0, 1], false), vec![0, 1]);
        assert_eq!(told.lock().len(), 2);
        assert!(
            matches!(told.lock()[0], TrackerChange::Silent { tracker, .. } if tracker == addrs[0])
        );
        assert_eq!(told.lock()[1], TrackerChange::Back { tracker: addrs[0] });
        assert_eq!(set.health()[0].silences, 1);
        assert!(TrackerSet::new(&[], 2).is_err());
        assert!(TrackerSet::new(&addrs, 0).is_err());
        assert_eq!(
            TrackerSet::new(&[addrs[0], addrs[0]], 2)
                .unwrap()
                .addrs()
                .len(),
            1
        );
    }
}
