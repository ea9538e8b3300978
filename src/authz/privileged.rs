//! `system:masters` may do anything, whatever the authorizer it wraps would say: as
//! k8s.io/apiserver's delegated authorization puts a privileged-groups authorizer
//! (`AlwaysAllowGroups`, `system:masters` by default) ahead of the SubjectAccessReview
//! one, so that cluster admins are never asked about, and never locked out by a webhook
//! that cannot answer.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Attributes, Authorizer, Decision, Error};

/// Members are allowed everything without asking the wrapped authorizer.
const PRIVILEGED_GROUP: &str = "system:masters";

/// Allows `PRIVILEGED_GROUP`'s members; asks `inner` about everyone else.
pub struct Privileged {
    inner: Arc<dyn Authorizer>,
}

impl Privileged {
    pub fn new(inner: Arc<dyn Authorizer>) -> Self {
        Privileged { inner }
    }
}

#[async_trait]
impl Authorizer for Privileged {
    async fn authorize(&self, attrs: &Attributes) -> Result<Decision, Error> {
        if attrs.user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(Decision::Allow);
        }
        self.inner.authorize(attrs).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::authn::UserInfo;

    /// Denies everything, counting the questions.
    #[derive(Default)]
    struct DenyAll(AtomicUsize);

    #[async_trait]
    impl Authorizer for DenyAll {
        async fn authorize(&self, _: &Attributes) -> Result<Decision, Error> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(Decision::Deny("no".into()))
        }
    }

    fn attrs(user: UserInfo) -> Attributes {
        Attributes {
            user: user.into(),
            verb: "delete".into(),
            resource: "events".into(),
            resource_request: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn masters_are_allowed_without_asking_and_others_are_asked() {
        let inner = Arc::new(DenyAll::default());
        let authz = Privileged::new(inner.clone());
        let admin = UserInfo::new("admin", &["system:authenticated", PRIVILEGED_GROUP]);
        assert_eq!(
            authz.authorize(&attrs(admin)).await.unwrap(),
            Decision::Allow
        );
        assert_eq!(inner.0.load(Ordering::Relaxed), 0, "never asked");
        // A user named like the group is not in it.
        let alice = UserInfo::new(PRIVILEGED_GROUP, &["system:authenticated"]);
        assert_eq!(
            authz.authorize(&attrs(alice)).await.unwrap(),
            Decision::Deny("no".into())
        );
        assert_eq!(inner.0.load(Ordering::Relaxed), 1);
    }
}
