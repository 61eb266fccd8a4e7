//! Keeping the bucket sound and small: verify, checkpoints and garbage collection.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::*;

/// How old a link's objects must be, by the store's clock, before garbage collection deletes them.
pub const ABANDONED_LINK_AGE_MS: u64 = 24 * 60 * 60 * 1000;

impl Vault {
    /// Fetches and authenticates everything in the bucket: every checkpoint index listed; the
    /// newest checkpoint's packs (listed with the sizes its index records) and every block in
    /// them; the blocks of packs only older checkpoints still reference; the segments the newest
    /// checkpoint covers that are still listed (authenticated, chained to each other where
    /// consecutive, the one at a covered head matching the checkpoint's hash); and every segment
    /// after it, checking every device's chain from the checkpoint (or from its first segment),
    /// every claim segments make about each other, and that nothing this device already applied
    /// was rolled back; and every roster entry, folding the roster from them and the entries
    /// this device keeps. Every object must have the size the listing promises. It also checks
    /// that every chunk of every attachment referenced by this device's messages is present.
    /// Objects under the vault prefix that are no vault object are reported by name, not
    /// refused. Changes nothing but the cache of known checkpoints.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut scratch = SyncReport::default();
        let mut pass = self.start_pass(&mut scratch).await?;
        pass.engine.check_rollback()?;
        pass.engine.start_from_scratch();
        let mut report = VerifyReport {
            unknown: pass.engine.unknown().to_vec(),
            ..VerifyReport::default()
        };
        // The roster first: segments are checked against it.
        let (entries, refused) = self.verify_roster(pass.engine.listing()).await?;
        report.roster_entries = entries;
        report.roster_refused = refused;
        // Every listed index authenticates (those this pass has not opened yet are fetched).
        let mut indexes = std::mem::take(&mut pass.indexes);
        for get in pass.engine.all_indexes()? {
            if let std::collections::btree_map::Entry::Vacant(entry) =
                indexes.entry(get.name.clone())
            {
                let bytes = self.read_exact(&get, &mut scratch).await?;
                entry.insert(self.index_that_counts(&mut pass, &get, &bytes)?);
            }
        }
        report.checkpoints = indexes.len() as u64;
        let newest = pass.engine.newest().map(|(name, _)| name.to_owned());
        let mut verified_packs = std::collections::BTreeSet::new();
        if let Some(index) = newest.as_ref().and_then(|name| indexes.get(name)) {
            let gets = {
                let local = lock(&self.local)?;
                pass.engine.adopt(index, |id| local.segment_hash(id))?
            };
            let chat_keys = pass.engine.chat_keys().clone();
            let mut operations = 0;
            self.for_each_pack(index, &gets, &chat_keys, &mut scratch, |ops| {
                operations += ops.len() as u64;
                Ok(())
            })
            .await?;
            report.operations += operations;
            verified_packs.extend(gets.into_iter().map(|get| get.name));
        }
        // Packs that only older checkpoints (not yet collected) reference: their blocks too.
        for (name, index) in &indexes {
            if Some(name) == newest.as_ref() {
                continue;
            }
            let listed_packs = index
                .packs
                .iter()
                .any(|(pack, _)| pass.engine.listing().packs.contains_key(pack));
            let unverified = index
                .packs
                .iter()
                .any(|(pack, _)| !verified_packs.contains(pack));
            if !listed_packs || !unverified {
                continue;
            }
            let mut chat_keys = pass.engine.chat_keys().clone();
            for grant in &index.grants {
                chat_keys.learn(grant)?;
            }
            let gets = pass.engine.pack_gets(index)?;
            self.for_each_pack(index, &gets, &chat_keys, &mut scratch, |_| Ok(()))
                .await?;
            verified_packs.extend(gets.into_iter().map(|get| get.name));
        }
        report.unreferenced_packs = pass
            .engine
            .listing()
            .packs
            .keys()
            .filter(|pack| !verified_packs.contains(*pack))
            .count() as u64;
        // Segments the newest checkpoint covers, where still listed.
        for get in pass.engine.covered_segments()? {
            let (segment, _) = self.fetch_segment(&get).await?;
            pass.engine.accept_covered(&segment)?;
            report.segments += 1;
        }
        // Every other listed segment, every branch of every device's tree.
        let mut segments = Vec::new();
        for get in pass.engine.plan(|_| Ok(false))? {
            let (segment, _) = self.fetch_segment(&get).await?;
            let local = lock(&self.local)?;
            pass.engine.accept(&segment, |id| local.segment_hash(id))?;
            segments.push(segment);
        }
        pass.engine.check_applied()?;
        report.devices = pass.engine.devices().len() as u64;
        {
            let local = lock(&self.local)?;
            for segment in &segments {
                pass.engine
                    .check_claims(segment, |id| local.segment_hash(id))?;
                report.operations +=
                    open_blocks(&self.keys, pass.engine.chat_keys(), segment)?.len() as u64;
                report.segments += 1;
            }
        }
        report.attachments = self.check_attachments_present().await?;
        Ok(report)
    }

    /// Checks that every chunk of every attachment this device's messages reference is in the
    /// bucket with its expected size (one LIST; the content itself is authenticated when it is
    /// downloaded). Returns the number of contents checked.
    pub(super) async fn check_attachments_present(&self) -> Result<u64> {
        let Some(referenced) = self.referenced_attachments()? else {
            return Ok(0);
        };
        if referenced.is_empty() {
            return Ok(0);
        }
        let root = self.attachments_prefix();
        let sizes: BTreeMap<String, u64> = self
            .store
            .list(&root)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.key.strip_prefix(&root)?.to_owned(), o.size)))
            .collect();
        for attachment in referenced.values() {
            for index in 0..attachment.chunk_count() {
                let name = attachment.chunk_name(index);
                let expected = crate::attachment::stream::chunk_object_len(
                    attachment.size,
                    attachment.chunk_size,
                    index,
                );
                match sizes.get(&name) {
                    Some(&size) if size == expected => {}
                    Some(&size) => {
                        return Err(Error::Integrity(crate::IntegrityProblem::WrongSize {
                            name,
                            expected,
                            found: size,
                        }));
                    }
                    None => {
                        return Err(Error::Integrity(crate::IntegrityProblem::MissingObject {
                            name,
                        }));
                    }
                }
            }
        }
        Ok(referenced.len() as u64)
    }

    /// Attachments live messages reference, or `None` when the content cache does not hold every
    /// chat (so which attachments are referenced is not known here).
    fn referenced_attachments(
        &self,
    ) -> Result<Option<BTreeMap<crate::attachment::ContentId, Attachment>>> {
        match lock(&self.local)?.referenced_attachments() {
            Ok(referenced) => Ok(Some(referenced)),
            Err(Error::NotCached { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Deletes what the newest checkpoint made redundant, once it is older than `grace_ms`:
    /// the segments it covers and older checkpoints with their packs. Without locks: a device
    /// still reading those objects has had `grace_ms` to finish, and a device that falls behind
    /// starts again from the checkpoint. Returns the number of objects deleted.
    ///
    /// It also deletes attachment content that no live message references any more and whose
    /// chunks are all older than `grace_ms`: content of deleted messages and chats, and chunks
    /// of uploads abandoned half way. The grace period protects an upload in progress on another
    /// device, whose message is not synced yet. That needs every device's references: only a
    /// device whose content cache holds every chat, and that has applied every segment in the
    /// bucket (call [`sync`](Self::sync) first), deletes attachment content; otherwise none is.
    ///
    /// It pushes what this device recorded first, but does not pull: pulled changes go to the
    /// app's listener, which only `sync` has.
    pub async fn collect_garbage(&self, grace_ms: u64) -> Result<u64> {
        let _guard = self.sync_lock.lock().await;
        let mut scratch = SyncReport::default();
        let never = CancelToken::new();
        self.push(None, &mut scratch, &never).await?;
        // One listing serves the three decisions: what the log holds, whether this device has
        // applied all of it (only then are attachment references complete), and the store's
        // clock.
        let mut pass = self.start_pass(&mut scratch).await?;
        let applied_everything = pass.engine.applied_everything();
        let vault_written_ms = pass.store_now_ms;
        let log = self.collect_log_garbage(&mut pass, grace_ms).await?;
        let links = self.collect_abandoned_links(vault_written_ms).await?;
        let attachments = if applied_everything {
            self.collect_attachment_garbage(grace_ms, vault_written_ms)
                .await?
        } else {
            0
        };
        Ok(log + links + attachments)
    }

    /// Deletes the objects of links that ended more than [`ABANDONED_LINK_AGE_MS`] ago by the
    /// store's clock (a joiner that never came back for its welcome, an offer nobody answered
    /// after a join): a link lasts an hour at most, and its devices delete its objects when it
    /// completes.
    async fn collect_abandoned_links(&self, vault_written_ms: Option<u64>) -> Result<u64> {
        let root = format!("{}links/", self.prefix());
        let listed = self.store.list(&root).await?;
        let store_now = listed
            .iter()
            .filter_map(|object| object.modified_ms)
            .chain(vault_written_ms)
            .max()
            .map_or(0, |newest| newest.min(self.now_ms()));
        let cutoff = store_now.saturating_sub(ABANDONED_LINK_AGE_MS);
        let mut deleted = 0;
        for object in listed {
            let Some(name) = object.key.strip_prefix(&self.prefix()) else {
                continue;
            };
            if crate::link::parse_link_name(name).is_some()
                && object.modified_ms.is_some_and(|at| at <= cutoff)
            {
                self.store.delete(&object.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes unreferenced attachment chunks older than `grace_ms` (the caller holds the sync
    /// lock and has just synced; `vault_written_ms` is the newest write its vault listing showed).
    pub(super) async fn collect_attachment_garbage(
        &self,
        grace_ms: u64,
        vault_written_ms: Option<u64>,
    ) -> Result<u64> {
        // Without every chat's content nothing can be shown unreferenced: delete nothing.
        let Some(referenced) = self.referenced_attachments()? else {
            return Ok(0);
        };
        let root = self.attachments_prefix();
        let listed = self.store.list(&root).await?;
        // Aged by the store's clock: the newest write it shows (this sync's segment, usually),
        // never later than this device's clock. A device whose clock runs fast must not delete
        // the chunks of an upload whose message has not synced yet.
        let store_now = listed
            .iter()
            .filter_map(|object| object.modified_ms)
            .chain(vault_written_ms)
            .max()
            .map_or(0, |newest| newest.min(self.now_ms()));
        let cutoff = store_now.saturating_sub(grace_ms);
        // Per content: its chunk names, and whether every one is old enough.
        let mut candidates: BTreeMap<crate::attachment::ContentId, (Vec<String>, bool)> =
            BTreeMap::new();
        for object in &listed {
            let Some(name) = object.key.strip_prefix(&root) else {
                continue;
            };
            let Some((content_id, _)) = crate::attachment::parse_chunk_name(name) else {
                continue; // not ours: leave it
            };
            if referenced.contains_key(&content_id) {
                continue;
            }
            let old = object.modified_ms.is_some_and(|at| at <= cutoff);
            let entry = candidates.entry(content_id).or_insert((Vec::new(), true));
            entry.0.push(object.key.clone());
            entry.1 &= old;
        }
        let mut deleted = 0;
        for (keys, all_old) in candidates.into_values() {
            if !all_old {
                continue;
            }
            for key in keys {
                self.store.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The segment, checkpoint and pack part of [`collect_garbage`](Self::collect_garbage).
    /// Returns the objects deleted.
    pub(super) async fn collect_log_garbage(
        &self,
        pass: &mut super::pull::Pass,
        grace_ms: u64,
    ) -> Result<u64> {
        let mut scratch = SyncReport::default();
        // A device the roster does not count (its add was fenced by a revocation it cannot
        // read) judges the log by a roster it cannot bring up to date: it deletes nothing.
        if self.recovery_signer.is_none() && !self.current_roster()?.is_active(self.device_id()) {
            return Ok(0);
        }
        let Some(newest) = pass.engine.newest().map(|(name, _)| name.to_owned()) else {
            return Ok(0);
        };
        // Aged by the store's clock (see `Pass::newest_checkpoint_age_ms`); a store that gives
        // no times is collected only without grace.
        let age = pass.newest_checkpoint_age_ms(self.now_ms());
        if grace_ms > 0 && age.is_none_or(|age| age < grace_ms) {
            return Ok(0);
        }
        // Checkpoints keep unchanged chats' blocks where they lie: every pack the newest index
        // references stays, whichever checkpoint wrote it.
        let Some(index) = self.newest_index(pass, &mut scratch).await? else {
            return Ok(0);
        };
        // Indexes written after the newest stay, and every pack they reference: a device
        // vouching for the newest before a roster change sets it aside writes one that covers
        // no more (or less, when it drops tips it cannot check), and the roster change that
        // makes it the one that counts comes after.
        let later = self
            .indexes_written_after_newest(pass, &mut scratch)
            .await?;
        let mut referenced: std::collections::BTreeSet<String> =
            index.packs.iter().map(|(name, _)| name.clone()).collect();
        for (_, later_index) in &later {
            referenced.extend(later_index.packs.iter().map(|(name, _)| name.clone()));
        }
        let covered = pass.engine.newest_covered();
        let Some(newest_id) = parse_checkpoint_name(&newest) else {
            return Ok(0);
        };
        let listing = pass.engine.listing();
        let later_ids: Vec<(DeviceId, u64, u64)> = later
            .iter()
            .filter_map(|(name, _)| parse_checkpoint_name(name))
            .collect();
        // Packs are written before their index, so packs without a listed index may belong to a
        // checkpoint another device is writing right now: only packs of a listed, superseded
        // checkpoint, or of an attempt its writer has since replaced, are redundant.
        let indexes: Vec<(DeviceId, u64, u64)> = listing
            .checkpoints
            .keys()
            .filter_map(|name| parse_checkpoint_name(name))
            .collect();
        // So are the packs of a revoked device's indexes (set aside for good, whatever else the
        // roster does), once older than the grace, unless an index that counts references them.
        // The index objects stay, as evidence, like its refused segments. Other indexes set
        // aside keep their packs: whether they count may change with entries this device has
        // not read yet.
        let roster = self.current_roster()?;
        let store_now = pass.store_now_ms.unwrap_or(0).min(self.now_ms());
        let revoked_indexes: Vec<(DeviceId, u64, u64)> = listing
            .unknown
            .iter()
            .filter(|name| {
                grace_ms == 0
                    || pass
                        .written_ms
                        .get(*name)
                        .is_some_and(|written| store_now.saturating_sub(*written) >= grace_ms)
            })
            .filter_map(|name| parse_checkpoint_name(name))
            .filter(|(device, _, _)| {
                roster
                    .devices
                    .get(device)
                    .is_some_and(|record| record.revoked.is_some())
            })
            .collect();
        let pack_is_redundant = |key: &str| {
            let Some((device, seq, tag, _)) = parse_pack_name(key) else {
                return false;
            };
            // An index of the same number and another tag is another copy's (a state
            // directory copied), not a later attempt: its packs may be in flight.
            !referenced.contains(key)
                && (device, seq, tag) != newest_id
                && !later_ids.contains(&(device, seq, tag))
                && (revoked_indexes.contains(&(device, seq, tag))
                    || indexes
                        .iter()
                        .any(|(d, s, t)| *d == device && (*s > seq || (*s == seq && *t == tag))))
        };
        // Names that are no vault object are never touched: they are not ours to delete.
        // Exactly what the walk from its covered tips reaches, in ascending sequence numbers per
        // device: an interrupted collection leaves an upper part the walk still follows.
        let redundant_segments = listing
            .all_segments()
            .filter(|(segment, _)| covered.reached(segment.id()))
            .map(|(_, listed)| listed.name.as_str());
        let redundant_indexes = listing
            .checkpoints
            .keys()
            .filter(|name| **name != newest && !later.iter().any(|(kept, _)| kept == *name))
            .map(String::as_str);
        let redundant_packs = listing
            .packs
            .keys()
            .filter(|name| pack_is_redundant(name))
            .map(String::as_str);
        let mut deleted = 0;
        for name in redundant_segments
            .chain(redundant_indexes)
            .chain(redundant_packs)
        {
            self.store
                .delete(&format!("{}{name}", self.prefix()))
                .await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// The listed indexes other than the newest that were written after it (by the store's
    /// clock, or their writers' when the store gives no times), opened.
    async fn indexes_written_after_newest(
        &self,
        pass: &mut super::pull::Pass,
        report: &mut SyncReport,
    ) -> Result<Vec<(String, CheckpointIndex)>> {
        let Some((newest, newest_coverage)) = pass.engine.newest() else {
            return Ok(Vec::new());
        };
        let newest_written = pass.written_ms.get(newest).copied();
        let written = |name: &str| match newest_written {
            Some(_) => pass.written_ms.get(name).copied(),
            None => pass.engine.coverage(name).map(|c| c.created_at_ms),
        };
        let newest_time = newest_written.unwrap_or(newest_coverage.created_at_ms);
        let later: Vec<crate::sync::plan::Get> = pass
            .engine
            .all_indexes()?
            .into_iter()
            .filter(|get| {
                get.name != newest && written(&get.name).is_some_and(|t| t >= newest_time)
            })
            .collect();
        let mut out = Vec::with_capacity(later.len());
        for get in later {
            let index = match pass.indexes.remove(&get.name) {
                Some(index) => index,
                None => {
                    let bytes = self.read_exact(&get, report).await?;
                    self.index_that_counts(pass, &get, &bytes)?
                }
            };
            out.push((get.name, index));
        }
        Ok(out)
    }
}

/// How old the newest checkpoint must be before a sync deletes what it replaced (7 days).
pub(super) const AUTO_GC_GRACE_MS: u64 = 7 * 24 * 3_600_000;
