//! When a served peer may ask, and what it is offered: the connection's upload turn
//! (`Unchoke` when it begins, `Choke` when it ends) and, for a complete file, the pieces
//! offered a few at a time and withdrawn at the turn's end, as
//! [`seeding`](super::super::seeding) describes. Part of the [`Outbox`], which calls
//! [`Outbox::offer`] whenever the peer may want something new and [`Outbox::next_turn`]
//! when the turn's time is up.

use std::time::Instant;

use crate::error::Result;
use crate::messages::{ContentId, Message};

use super::super::seeding::{
    OFFERS_OPEN, OFFERS_OPEN_SPARE, STARVING, TURN_PIECES, TURN_TIME, pick_offers,
};
use super::super::serve::JOBS_QUEUED;
use super::{Feed, Job, Outbox};

impl Outbox<'_> {
    /// When the peer wants what this node can give: holds (or gets) a turn, unchokes the
    /// peer, and offers pieces of complete files. When it wants nothing: ends the turn.
    pub(super) fn offer(&mut self) -> Result<()> {
        if !self.feeds.values().any(Feed::wanted) {
            return self.end_turn();
        }
        if self.turn.is_none() {
            if !self.ctx.turns.ask(self.id, &self.wake_tx) {
                return Ok(());
            }
            self.turn = Some((0, Instant::now() + TURN_TIME));
            self.last_active = Instant::now();
        }
        if !self.unchoked {
            self.unchoked = true;
            self.served_choked = 0;
            self.send(&Message::Unchoke)?;
        }
        let Some((sent, _)) = self.turn else {
            return Ok(());
        };
        let mut offers = Vec::new();
        let spare = !self.ctx.turns.anyone_waiting();
        for (content, feed) in &mut self.feeds {
            let Some(peer) = feed.peer.as_ref().filter(|_| feed.gated) else {
                continue;
            };
            // With nobody waiting the turn is renewed when it ends, so its end is no
            // reason to let the peer's pipeline run dry: a seed serving one downloader
            // drained it every eighth piece and waited a round trip to fill it again.
            let budget = if spare {
                usize::MAX
            } else {
                (TURN_PIECES.saturating_sub(sent) as usize).saturating_sub(feed.open.len())
            };
            // With room to spare, offers go out once half are taken, several in one `Have`,
            // so a fast downloader asks for them together.
            let room = if !spare {
                OFFERS_OPEN.saturating_sub(feed.open.len()).min(budget)
            } else if feed.open.len() <= OFFERS_OPEN_SPARE / 2 {
                OFFERS_OPEN_SPARE - feed.open.len()
            } else {
                0
            };
            if room == 0 {
                continue;
            }
            // A peer that gains nothing anywhere is offered what it lacks, however many
            // copies this node's other peers hold: it may not reach them.
            let relaxed = spare || feed.gained.elapsed() >= STARVING;
            let picked = {
                let mut copies = feed.shared.copies.lock();
                pick_offers(&mut copies, peer, &feed.told, room, relaxed, &mut self.rng)
            };
            for &p in &picked {
                feed.told.set(p);
                feed.open.insert(p);
                feed.withdrawn.remove(&p);
            }
            if !picked.is_empty() {
                offers.push((*content, picked));
            }
        }
        for (content, pieces) in offers {
            self.send(&Message::Have { content, pieces })?;
        }
        Ok(())
    }

    /// At the end of a turn: renews it if nobody waits, else passes it on.
    pub(super) fn next_turn(&mut self) -> Result<()> {
        if self.turn.is_some() && !self.ctx.turns.anyone_waiting() {
            self.turn = Some((0, Instant::now() + TURN_TIME));
            self.last_active = Instant::now();
            return Ok(());
        }
        self.end_turn()
    }

    /// Gives up this connection's turn, chokes the peer, and withdraws the offers not
    /// yet sent, dropping the requests for them; the connection asks for a turn again
    /// when the peer next wants something.
    ///
    /// An offer left open past its turn counted as a copy on its way for as long as the
    /// peer waited for its next turn, and meanwhile the same piece was offered to others:
    /// both asked, and the seed sent it twice. Withdrawn, it goes to a peer whose turn it
    /// is. Requests for pieces of partial files are answered as before.
    pub(super) fn end_turn(&mut self) -> Result<()> {
        // Always: a turn may have been handed to this connection while it waited in line,
        // before it knew; and leaving the line is the same call.
        self.turn = None;
        self.ctx.turns.end(self.id);
        if !self.unchoked {
            return Ok(());
        }
        self.unchoked = false;
        self.send(&Message::Choke)?;
        if self.feeds.values().all(|f| f.open.is_empty()) {
            return Ok(());
        }
        // Requests the reading half has passed on but this thread has not seen yet.
        while self.queued.len() < JOBS_QUEUED {
            let Ok(job) = self.jobs.try_recv() else { break };
            self.queued.push_back(job);
        }
        let mut withdrawn = Vec::new();
        for (content, feed) in &mut self.feeds {
            if feed.open.is_empty() {
                continue;
            }
            let pieces: Vec<u32> = feed.open.drain().collect();
            let mut copies = feed.shared.copies.lock();
            for &p in &pieces {
                copies.close(p, false);
                feed.told.unset(p);
                feed.withdrawn.insert(p);
            }
            self.queued.retain(|job| {
                !matches!(job, Job::Data { content: c, piece, .. }
                    if c == content && pieces.contains(piece))
            });
            withdrawn.push((*content, pieces));
        }
        for (content, pieces) in withdrawn {
            self.send(&Message::Withdraw { content, pieces })?;
        }
        Ok(())
    }

    /// Takes back the offer of `piece`, whose first copy went to another peer after it was
    /// offered here, while some piece of the file has no copy out at all: the seed's upload
    /// goes to that piece instead, and the peer gets this one from whoever holds it (or
    /// from this node once the first copy is out). At 32 hosts the seed sent five second
    /// copies this way before its last first copy, each a quarter second of its uplink.
    pub(super) fn defer(&mut self, content: ContentId, piece: u32) -> Result<()> {
        if let Some(feed) = self.feeds.get_mut(&content) {
            if feed.open.remove(&piece) {
                feed.shared.copies.lock().close(piece, false);
            }
            feed.told.unset(piece);
            feed.withdrawn.insert(piece);
        }
        self.send(&Message::Withdraw {
            content,
            pieces: vec![piece],
        })?;
        self.offer()
    }
}
