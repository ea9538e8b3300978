//! Reading the replay window: a LIST's page (at a resourceVersion, after a continue
//! point, up to a limit), the newest event a GET names, and the window's figures for
//! the scrape.

use super::*;

/// Which part of the window a LIST reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListRange {
    /// Only events after this resourceVersion (where the previous page ended; 0: all).
    pub after: u64,
    /// Whether `after` must still be followed by everything that came after it: a
    /// consistent continuation, which fails with `Expired` once the window moved on.
    pub after_must_be_kept: bool,
    /// Which state of the window.
    pub at: At,
    /// At most this many events (0: no limit).
    pub limit: usize,
}

/// The state of the window a LIST reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum At {
    /// As it is now.
    #[default]
    Now,
    /// As it was when this resourceVersion was the newest: the events up to it.
    Exact(u64),
    /// As it is now, which must be at least this resourceVersion, and the window must
    /// still hold what followed it.
    NotOlderThan(u64),
}

/// A LIST that cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Expired(#[from] Expired),
    /// `at` is newer than the newest event.
    #[error("too large resource version: {requested}, current: {current}")]
    TooLarge { requested: u64, current: u64 },
    #[error(transparent)]
    Unavailable(#[from] Down),
}

/// One page of the window, taken under the bus lock.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Published>>,
    /// The resourceVersion the page is consistent with.
    pub resource_version: u64,
    /// More matching events follow the last item (up to `resource_version`).
    pub more: bool,
}

impl State {
    /// Copy the window's size and ends to `stats`, for the next scrape.
    pub(super) fn report_window(&self, stats: &Stats) {
        stats
            .window_events
            .store(self.window.len(), Ordering::Relaxed);
        stats
            .window_bytes
            .store(self.window_bytes, Ordering::Relaxed);
        let oldest = self.window.front().map_or(0, |p| p.resource_version);
        stats
            .window_oldest_resource_version
            .store(oldest, Ordering::Relaxed);
        stats
            .window_newest_resource_version
            .store(self.last_rv, Ordering::Relaxed);
    }

    /// The oldest resourceVersion still held (one past the newest, when none is).
    pub(super) fn oldest(&self) -> u64 {
        self.window
            .front()
            .map_or(self.last_rv + 1, |p| p.resource_version)
    }
}

impl Bus {
    /// The events of the window that `filter` selects, within `range`. The lock is held
    /// for a scan of the window from `range.after` on (a search finds where to start),
    /// comparing routing fields only; nothing is copied but `Arc`s.
    pub fn list(&self, filter: &Filter, range: ListRange) -> Result<Page, ListError> {
        self.list_where(filter, range, |_| true)
    }

    /// `list`, keeping only the events `keep` accepts too (a reader's own visibility,
    /// decided before the call): a page's `limit` counts what is kept.
    pub fn list_where(
        &self,
        filter: &Filter,
        range: ListRange,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Page, ListError> {
        let st = self.lock();
        if let Some(down) = &st.down {
            return Err(down.clone().into());
        }
        let lost = |n: u64| n < st.evicted_through;
        let at = match range.at {
            At::Now => st.last_rv,
            At::Exact(n) | At::NotOlderThan(n) if n > st.last_rv => {
                return Err(ListError::TooLarge {
                    requested: n,
                    current: st.last_rv,
                });
            }
            At::Exact(n) | At::NotOlderThan(n) if lost(n) => {
                return Err(Expired {
                    requested: n,
                    oldest: st.oldest(),
                }
                .into());
            }
            At::Exact(n) => n,
            At::NotOlderThan(_) => st.last_rv,
        };
        if range.after_must_be_kept && lost(range.after) {
            return Err(Expired {
                requested: range.after,
                oldest: st.oldest(),
            }
            .into());
        }
        let start = st
            .window
            .partition_point(|p| p.resource_version <= range.after);
        let mut page = Page {
            items: Vec::new(),
            resource_version: at,
            more: false,
        };
        for p in st.window.range(start..) {
            if p.resource_version > at {
                break;
            }
            if !filter.matches(&p.event) || !keep(&p.event) {
                continue;
            }
            if range.limit > 0 && page.items.len() == range.limit {
                page.more = true;
                break;
            }
            page.items.push(p.clone());
        }
        Ok(page)
    }

    /// The newest event of the window that `pred` accepts; while the bus is down, why
    /// it is (what this replica holds may be behind the stream).
    pub fn find(&self, pred: impl Fn(&Event) -> bool) -> Result<Option<Arc<Published>>, Down> {
        let st = self.lock();
        if let Some(down) = &st.down {
            return Err(down.clone());
        }
        Ok(st.window.iter().rev().find(|p| pred(&p.event)).cloned())
    }
}
