//! What the handle steers, and what survives a stop: pausing and resuming a download, and
//! its resume record. Part of the [`Coordinator`], which calls [`Coordinator::steer`] when
//! the handle wakes it and [`Coordinator::record`] on its tick and when it stops early.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::error::Result;

use super::super::super::Event;
use super::Coordinator;

impl Coordinator<'_, '_> {
    /// Follows the handle's wish: pausing lets every owner go, saves the resume record and
    /// stops serving the partial file; resuming serves it again, announces it and starts
    /// owners afresh. What is verified stays in the schedule either way.
    pub(super) fn steer(&mut self) -> Result<()> {
        let wanted = self
            .running
            .as_ref()
            .is_some_and(|r| r.paused.load(Ordering::SeqCst));
        if wanted == self.paused {
            return Ok(());
        }
        self.paused = wanted;
        let ctx = self.ctx();
        let file = self.job.file;
        if wanted {
            self.stop_all();
            self.record();
            if let Some(partial) = &self.partial {
                ctx.store.withdraw(partial);
            }
            ctx.emit(Event::DownloadPaused {
                download: self.job.id,
                file: file.into(),
                verified: self.sched.done_count(),
            });
            return Ok(());
        }
        self.partial = ctx.store.insert_partial(
            file,
            self.job.part.path().to_owned(),
            self.job.manifest.clone(),
            self.sched.done_bitfield(),
        );
        let now = Instant::now();
        (self.next_announce, self.next_poll, self.announced) = (now, now, 0);
        // The pause was not a stall: owners started now get their time to give.
        self.progressed = now;
        // Owners let go by the pause are not failures: ask them again at once.
        self.book.asked_again = false;
        ctx.emit(Event::DownloadResumed {
            download: self.job.id,
            file: file.into(),
        });
        self.top_up()?;
        self.fill_all();
        Ok(())
    }

    /// Saves the resume record if pieces were verified since the last one. A failure is
    /// reported and not fatal: a resumed download verifies every piece anyway.
    pub(super) fn record(&mut self) {
        let done = self.sched.done_bitfield();
        if done.count() == self.recorded || done.count() == done.len() {
            return;
        }
        match self.job.part.save_record(&done) {
            Ok(()) => self.recorded = done.count(),
            Err(e) => self.ctx().emit(Event::RecordFailed {
                download: self.job.id,
                file: self.job.file.into(),
                error: format!("saving {}: {e}", self.job.part.record_path().display()),
            }),
        }
    }
}
