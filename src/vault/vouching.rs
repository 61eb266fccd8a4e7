//! Vouching for the vault's checkpoints before a roster change (docs/DEVICES.md, FORMAT.md 9.5
//! "Which indexes count"): a revoke or rotation entry sets some checkpoint indexes aside (the
//! revoked device's, unsigned ones, those of devices the roster does not list) and some segments
//! of devices of before device keys. When the newest index that counts is among them, or such
//! segments lie outside it, the device about to write the entry first writes a signed index of
//! its own covering what they cover, so that nothing the change sets aside is lost.

use std::collections::BTreeSet;

use crate::sync::checkpoint::parse_checkpoint_name;
use crate::sync::plan::{Known, plan_segments};
use crate::sync::tree::walk;

use super::*;

/// What a vouching checkpoint is written for: the device about to be revoked, if any (see
/// `Vault::vouch_for_newest_checkpoint`).
pub(super) struct Vouching {
    pub(super) revoking: Option<DeviceId>,
}

impl Vault {
    /// Before a roster change after which some checkpoint indexes stop counting (those of
    /// `revoking`, and unsigned ones or those of unlisted devices once the roster no longer
    /// trusts writers of before device keys): when the newest index that counts now is one of
    /// them, or segments of devices the roster does not list lie outside the newest index,
    /// writes one of this device's own, signed, that covers what they cover. Devices that
    /// restore afterwards start from that one, not from an older index whose covered segments
    /// garbage collection may have taken. The caller holds the sync lock.
    ///
    /// The new index is built from the newest index that goes on counting and the segments
    /// after it, so nothing of the one set aside is vouched for, when the bucket still holds
    /// every segment that index covers beyond it; otherwise from the one set aside, keeping
    /// only the covered tips this device can check (listed, or applied here with that hash):
    /// a tip far ahead that a revoked device claimed would otherwise pass for covered.
    pub(super) async fn vouch_for_newest_checkpoint(
        &self,
        revoking: Option<DeviceId>,
    ) -> Result<()> {
        self.write_checkpoint_rounds(Some(Vouching { revoking }))
            .await
            .map(|_| ())
    }

    /// [`vouch_for_newest_checkpoint`](Self::vouch_for_newest_checkpoint) before a revocation or
    /// rotation, which goes on when the checkpoint cannot be written because objects it needs
    /// are missing or damaged in the bucket (`Integrity` or `Decode` errors): what they held is
    /// lost either way, and the device being cut off must not be able to prevent the change by
    /// damaging them. Store errors (offline, credentials) stop it, to be run again.
    pub(super) async fn vouch_unless_the_bucket_is_damaged(
        &self,
        revoking: Option<DeviceId>,
    ) -> Result<()> {
        match self.vouch_for_newest_checkpoint(revoking).await {
            Ok(()) | Err(Error::Integrity(_) | Error::Decode { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// For a vouching checkpoint: the listed indexes the roster change will set aside, or
    /// `None` when no checkpoint is needed (the newest index goes on counting, and it covers
    /// every segment of a device the roster does not list).
    pub(super) fn leaving_indexes(
        &self,
        pass: &super::pull::Pass,
        vouching: &Vouching,
    ) -> Result<Option<BTreeSet<String>>> {
        let known = lock(&self.local)?.known_checkpoints()?;
        let roster = self.current_roster()?;
        let stays = |name: &str| {
            known.get(name).is_some_and(|k| k.signature.is_some())
                && parse_checkpoint_name(name).is_some_and(|(writer, _, _)| {
                    Some(writer) != vouching.revoking && roster.is_active(writer)
                })
        };
        let listing = pass.engine.listing();
        let covered = pass.engine.newest_covered();
        // Segments written before device keys that the change leaves out (of devices the roster
        // does not list, or outside a listed device's unsigned tips: a copy of a state directory
        // made before device keys wrote a branch its twin's entry does not name) are refused from
        // then on by every device that did not apply them: an index must cover them for those.
        let after = roster.after_a_revoke_or_rotation();
        let mut seen_after = listing.clone();
        crate::sync::roster::refuse_segments(&after, &mut seen_after, &[]);
        let left_out_uncovered = listing.all_segments().any(|(segment, _)| {
            seen_after.segment(segment.id()).is_none() && !covered.reached(segment.id())
        });
        let newest_stays = pass.engine.newest().is_none_or(|(name, _)| stays(name));
        if newest_stays && !left_out_uncovered {
            return Ok(None);
        }
        Ok(Some(
            listing
                .checkpoints
                .keys()
                .filter(|name| !stays(name))
                .cloned()
                .collect(),
        ))
    }

    /// The base of a vouching checkpoint (see
    /// [`vouch_for_newest_checkpoint`](Self::vouch_for_newest_checkpoint)): the newest index
    /// that goes on counting, if the segments `replaced` (the newest now) covers beyond it are
    /// all still listed; otherwise `replaced`, with only the covered tips this device can check.
    pub(super) async fn vouching_base(
        &self,
        pass: &mut super::pull::Pass,
        leaving: &BTreeSet<String>,
        mut replaced: CheckpointIndex,
        report: &mut SyncReport,
    ) -> Result<Option<CheckpointIndex>> {
        for name in leaving {
            pass.engine.refuse_index(name);
        }
        let staying = self.newest_index(pass, report).await?;
        let listing = pass.engine.listing();
        let staying_covered = staying
            .as_ref()
            .map_or_else(Default::default, |index| walk(listing, &index.covered));
        let local = lock(&self.local)?;
        let mut complete = plan_segments(
            listing,
            &Known {
                have: &staying_covered.reached,
                covered: &staying_covered,
                applied: &|_| Ok(false),
            },
        )
        .is_ok();
        for head in &replaced.covered {
            let id = head.id();
            // Reached by the staying index's walk, not merely below its floor: a collected
            // branch below the floor is content only the replaced index may hold.
            let reachable = listing.segment(id).is_some() || staying_covered.reached(id);
            // A tip neither listed nor known here is a claim nobody can check: not carried.
            if !reachable && local.segment_hash(id)? == Some(head.hash) {
                complete = false;
            }
        }
        if complete {
            return Ok(staying);
        }
        let mut checked = Vec::with_capacity(replaced.covered.len());
        for head in replaced.covered {
            let id = head.id();
            if listing.segment(id).is_some() || local.segment_hash(id)? == Some(head.hash) {
                checked.push(head);
            }
        }
        replaced.covered = checked;
        Ok(Some(replaced))
    }
}
