//! `v1/forward_config`: forwarding destinations and rules created through
//! the operator API (`PUT /api/forward/destinations/{ae}`,
//! `PUT /api/forward/rules/{id}`), which must survive restarts the way the
//! configuration file does.
//!
//! Keys: `d 0x00 <AE title>` → [`DicomNode`] (JSON), `r 0x00 <rule id>` →
//! [`ForwardRule`] (JSON). Every write is flushed before it returns, so an
//! API answer of 200/201/204 means the change survives `kill -9`. The
//! caller (`crate::forward::managed`) validates and serialises the edits;
//! this module only keeps them.
//!
//! Purging a deleted destination's queue (`v1/forward`, prefix `<AE> 0x00`)
//! and removing the destination are one transaction: a crash leaves both or
//! neither.

use super::*;
use crate::config::{DicomNode, ForwardRule};

const TREE: &str = "v1/forward_config";

fn key(kind: u8, name: &str) -> Vec<u8> {
    let mut k = vec![kind, 0];
    k.extend_from_slice(name.as_bytes());
    k
}

const DESTINATION: u8 = b'd';
const RULE: u8 = b'r';

/// Everything stored through the API, in key order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// By AE title.
    pub destinations: Vec<(String, DicomNode)>,
    /// By rule id.
    pub rules: Vec<(String, ForwardRule)>,
}

impl Index {
    /// Wakes every forwarding lane to look at its queue (a destination's
    /// address changed).
    pub fn forward_wake_all(&self) {
        self.forward_queued();
    }

    /// Makes every pending item of `destination` due at `now_ms` (its
    /// address changed: the back-off earned at the old one does not
    /// apply); how many. Not flushed: after a crash they only wait their
    /// old time. Blocking.
    pub fn forward_reschedule(&self, destination: &str, now_ms: u64) -> Result<usize> {
        let mut moved = 0;
        let mut prefix = destination.trim().as_bytes().to_vec();
        prefix.push(0);
        for kv in self.forward.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(db_err("scan forward queue"))?;
            let mut item: ForwardItem = decode(&k, &v)?;
            if item.state != ForwardState::Pending || item.next_attempt_ms <= now_ms {
                continue;
            }
            item.next_attempt_ms = now_ms;
            // A lane that settled it meanwhile wins.
            let swapped = self
                .forward
                .compare_and_swap(&k, Some(&v), Some(encode(&item)))
                .map_err(db_err("reschedule forward items"))?;
            if swapped.is_ok() {
                moved += 1;
            }
        }
        if moved > 0 {
            self.forward_queued();
        }
        Ok(moved)
    }

    fn forward_config_tree(&self) -> Result<sled::Tree> {
        // sled keeps opened trees: this is a map lookup after the first.
        self.db
            .open_tree(TREE)
            .map_err(db_err("open forward config"))
    }

    /// The destinations and rules stored through the API. Blocking.
    pub fn forward_config(&self) -> Result<ForwardConfig> {
        let mut out = ForwardConfig::default();
        for kv in self.forward_config_tree()?.iter() {
            let (k, v) = kv.map_err(db_err("read forward config"))?;
            let name = String::from_utf8_lossy(k.get(2..).unwrap_or_default()).into_owned();
            match k.first() {
                Some(&DESTINATION) => out.destinations.push((name, decode(&k, &v)?)),
                Some(&RULE) => out.rules.push((name, decode(&k, &v)?)),
                // A later version's entry: not ours to read.
                _ => {}
            }
        }
        Ok(out)
    }

    /// Creates or replaces a destination; whether it existed. Flushed.
    /// Blocking.
    pub fn forward_config_put_destination(&self, ae: &str, node: &DicomNode) -> Result<bool> {
        let old = self
            .forward_config_tree()?
            .insert(key(DESTINATION, ae), encode(node))
            .map_err(db_err("write forward destination"))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Creates or replaces a rule; whether it existed. Flushed. Blocking.
    pub fn forward_config_put_rule(&self, id: &str, rule: &ForwardRule) -> Result<bool> {
        let old = self
            .forward_config_tree()?
            .insert(key(RULE, id), encode(rule))
            .map_err(db_err("write forward rule"))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Removes a rule; whether it existed. Flushed. Blocking.
    pub fn forward_config_delete_rule(&self, id: &str) -> Result<bool> {
        let old = self
            .forward_config_tree()?
            .remove(key(RULE, id))
            .map_err(db_err("delete forward rule"))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Removes a destination and, in the same transaction, every item of
    /// its queue (pending or failed); whether it existed and how many items
    /// went with it. Flushed. Blocking.
    pub fn forward_config_delete_destination(&self, ae: &str) -> Result<(bool, usize)> {
        let config = self.forward_config_tree()?;
        let mut queued = Vec::new();
        let mut prefix = ae.trim().as_bytes().to_vec();
        prefix.push(0);
        for kv in self.forward.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(db_err("scan forward queue"))?;
            queued.push(k);
        }
        let (existed, purged) = (&config, &self.forward)
            .transaction(|(config, forward)| {
                let existed = config.remove(key(DESTINATION, ae))?.is_some();
                let mut purged = 0;
                for k in &queued {
                    if forward.remove(k)?.is_some() {
                        purged += 1;
                    }
                }
                Ok::<_, ConflictableTransactionError<Error>>((existed, purged))
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok((existed, purged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str) -> DicomNode {
        DicomNode {
            ae_title: "PACS".into(),
            host: host.into(),
            port: 104,
            tls: false,
        }
    }

    fn rule(dest: &str) -> ForwardRule {
        ForwardRule {
            destination: dest.into(),
            on: "instance".into(),
            calling_aets: vec!["MOD".into()],
            modalities: vec![],
            sop_classes: vec![],
        }
    }

    #[test]
    fn entries_survive_reopening_and_deletes_purge_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            assert_eq!(index.forward_config().unwrap(), ForwardConfig::default());
            assert!(
                !index
                    .forward_config_put_destination("PACS", &node("a"))
                    .unwrap()
            );
            assert!(
                index
                    .forward_config_put_destination("PACS", &node("b"))
                    .unwrap()
            );
            assert!(!index.forward_config_put_rule("ct", &rule("PACS")).unwrap());
            assert!(!index.forward_config_put_rule("all", &rule("PACS")).unwrap());
            assert!(index.forward_config_delete_rule("all").unwrap());
            assert!(!index.forward_config_delete_rule("all").unwrap());
        }
        let index = crate::index::tests::reopen(dir.path());
        let cfg = index.forward_config().unwrap();
        assert_eq!(cfg.destinations, vec![("PACS".to_owned(), node("b"))]);
        assert_eq!(cfg.rules, vec![("ct".to_owned(), rule("PACS"))]);

        // Queue two items for PACS and one for another destination: the
        // delete takes PACS's only.
        index.set_forward_routes(vec![
            ForwardRoute {
                destination: "PACS".into(),
                ..ForwardRoute::default()
            },
            ForwardRoute {
                destination: "PACSX".into(),
                ..ForwardRoute::default()
            },
        ]);
        for sop in ["1.2.3.1.1", "1.2.3.1.2"] {
            let record = InstanceRecord::for_test("1.2.3", "1.2.3.1", sop);
            index
                .put_batch(&[records::NewEntry::Instance(Box::new(
                    records::NewInstance {
                        record,
                        study: records::StudyTags::default(),
                    },
                ))])
                .unwrap();
        }
        assert_eq!(index.forward_counts("PACS").unwrap().pending, 2);
        assert_eq!(
            index.forward_config_delete_destination("PACS").unwrap(),
            (true, 2)
        );
        assert_eq!(index.forward_counts("PACS").unwrap().pending, 0);
        assert_eq!(index.forward_counts("PACSX").unwrap().pending, 2);
        assert!(index.forward_config().unwrap().destinations.is_empty());
        assert_eq!(
            index.forward_config_delete_destination("PACS").unwrap(),
            (false, 0)
        );
    }
}
