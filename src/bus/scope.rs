//! What a subscriber selects (`Scope`, narrowed by a field selector in a `Filter`), and
//! the subscribers indexed by scope, so that an event visits only those that may want it.

use super::*;
use crate::selector::FieldSelector;

/// Which events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event (`events`).
    All,
    /// Every event that has a namespace (`namespacedevents` across namespaces).
    AllNamespaces,
    /// The events of one namespace.
    Namespace(Box<str>),
}

impl Scope {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Scope::All => true,
            Scope::AllNamespaces => event.namespace().is_some(),
            Scope::Namespace(ns) => event.namespace() == Some(&**ns),
        }
    }
}

/// What a subscriber wants: a scope, narrowed by a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub scope: Scope,
    pub selector: FieldSelector,
}

impl Filter {
    pub fn scope(scope: Scope) -> Self {
        Filter {
            scope,
            selector: FieldSelector::default(),
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.scope.matches(event) && self.selector.matches(event)
    }
}

/// Subscribers by scope: an event visits `all`, then (if it has a namespace)
/// `all_namespaces` and its namespace's list, and nobody else.
#[derive(Default)]
pub(super) struct Index {
    pub(super) all: Vec<Subscriber>,
    pub(super) all_namespaces: Vec<Subscriber>,
    pub(super) namespaces: HashMap<Box<str>, Vec<Subscriber>>,
}

impl Index {
    pub(super) fn list_mut(&mut self, scope: &Scope) -> &mut Vec<Subscriber> {
        match scope {
            Scope::All => &mut self.all,
            Scope::AllNamespaces => &mut self.all_namespaces,
            Scope::Namespace(ns) => self.namespaces.entry(ns.clone()).or_default(),
        }
    }

    pub(super) fn remove(&mut self, scope: &Scope, queue: &Arc<Queue>) {
        let list = self.list_mut(scope);
        list.retain(|s| !Arc::ptr_eq(&s.queue, queue));
        if list.is_empty()
            && let Scope::Namespace(ns) = scope
        {
            self.namespaces.remove(ns);
        }
    }
}

pub(super) struct Subscriber {
    pub(super) queue: Arc<Queue>,
    pub(super) selector: FieldSelector,
    /// The last batch that queued something here, so it is woken once per batch.
    pub(super) woken_in: u64,
}
