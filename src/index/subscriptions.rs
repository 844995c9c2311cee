//! Outbound webhook subscriptions (`crate::outbound`): `v1/subscriptions`,
//! id → [`Subscription`] (JSON, secrets included). The store cannot rebuild
//! them. Every change is flushed before it returns: the operator is shown a
//! secret only once it is durable. Blocking, like the rest of the index.

use std::sync::Arc;

use super::{Index, Result, db_err, decode, decode_all, encode};
use crate::outbound::Subscription;

const TREE: &str = "v1/subscriptions";

impl Index {
    fn subscriptions_tree(&self) -> Result<sled::Tree> {
        self.db
            .open_tree(TREE)
            .map_err(db_err("open subscriptions"))
    }

    /// Records a new subscription durably; `false` (and nothing written) if
    /// its id is taken.
    pub fn add_subscription(&self, subscription: &Subscription) -> Result<bool> {
        let added = self
            .subscriptions_tree()?
            .compare_and_swap(
                subscription.id.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(subscription)),
            )
            .map_err(db_err("add subscription"))?
            .is_ok();
        if added {
            self.flush()?;
            self.reload_subscriptions()?;
        }
        Ok(added)
    }

    /// Reads the subscriptions into the copy writes queue events from.
    pub(super) fn reload_subscriptions(&self) -> Result<()> {
        let all = self.subscriptions()?;
        *self.subscriptions.write().expect("subscriptions lock") = Arc::new(all);
        Ok(())
    }

    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>> {
        match self
            .subscriptions_tree()?
            .get(id)
            .map_err(db_err("read subscription"))?
        {
            Some(v) => decode(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every subscription, by id.
    pub fn subscriptions(&self) -> Result<Vec<Subscription>> {
        decode_all(self.subscriptions_tree()?.iter(), "list subscriptions")
    }

    /// Changes a subscription with `change` and stores it durably; the
    /// subscription as stored, or `None` if there is none with this id.
    /// `change` may run more than once: when another request changed the
    /// subscription in between, it is applied again to what that one wrote
    /// (so a patch and a rotation at the same moment both take effect).
    pub fn update_subscription(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Subscription),
    ) -> Result<Option<Subscription>> {
        let tree = self.subscriptions_tree()?;
        loop {
            let Some(old) = tree.get(id).map_err(db_err("read subscription"))? else {
                return Ok(None);
            };
            let mut subscription: Subscription = decode(id.as_bytes(), &old)?;
            change(&mut subscription);
            let swapped = tree
                .compare_and_swap(id, Some(old), Some(encode(&subscription)))
                .map_err(db_err("update subscription"))?;
            if swapped.is_ok() {
                self.flush()?;
                self.reload_subscriptions()?;
                return Ok(Some(subscription));
            }
        }
    }

    /// Removes a subscription and its messages durably; whether there was
    /// one.
    pub fn remove_subscription(&self, id: &str) -> Result<bool> {
        let removed = self
            .subscriptions_tree()?
            .remove(id)
            .map_err(db_err("remove subscription"))?
            .is_some();
        if removed {
            self.reload_subscriptions()?;
            self.remove_messages(id)?;
            self.flush()?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use crate::index::Index;
    use crate::outbound::{NewSubscription, Patch, SigningSecret};

    #[test]
    fn subscriptions_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let new: NewSubscription = serde_json::from_value(serde_json::json!({
            "name": "RIS", "url": "https://ris.example/", "events": ["study.received"],
        }))
        .unwrap();
        let s = new.create(now).unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            assert!(index.add_subscription(&s).unwrap());
            assert!(!index.add_subscription(&s).unwrap(), "the id is taken");
            let patch: Patch =
                serde_json::from_value(serde_json::json!({ "active": false })).unwrap();
            let patch = patch.check().unwrap();
            let new_secret = SigningSecret::generate().unwrap();
            let changed = index
                .update_subscription(&s.id, |s| {
                    s.apply(&patch, now);
                    s.rotate(new_secret.clone(), now);
                })
                .unwrap()
                .unwrap();
            assert!(!changed.active);
            assert_eq!(changed.secret(), &new_secret);
            assert_eq!(index.update_subscription("wh_none", |_| {}).unwrap(), None);
        }
        let index = crate::index::tests::reopen(dir.path());
        let kept = index.subscription(&s.id).unwrap().unwrap();
        assert!(!kept.active);
        assert_eq!(kept.signing_secrets(now).len(), 2);
        assert_eq!(index.subscriptions().unwrap(), vec![kept]);
        assert!(index.remove_subscription(&s.id).unwrap());
        assert!(!index.remove_subscription(&s.id).unwrap());
        assert_eq!(index.subscription(&s.id).unwrap(), None);
    }
}
