//! A state directory that turns out to be a copy of another device's (docs/SYNC.md, "Copies of
//! a state directory"): it continues as a device of its own, with a new id and keys.

use super::*;

impl Vault {
    /// This state directory is a copy of another that still writes as the same device (an OS
    /// backup restored onto a second phone while the first keeps running, a VM snapshot, a
    /// copied app folder): the other copy already wrote the sequence number `pending` holds.
    /// This copy becomes a device of its own: a new random id, its staged operations sealed
    /// again as that device's first segment. Nothing is lost: the other copy's segments are
    /// pulled like any other device's, and this copy's operations travel under the new id.
    /// Returns the segment to upload instead.
    ///
    /// Without a staged segment (a checkpoint name found taken), only the outbox is stamped
    /// again.
    pub(super) fn fork_off(
        &self,
        pending: Option<PendingSegment>,
    ) -> Result<Option<PendingSegment>> {
        let mut chat_keys = lock(&self.chat_keys)?.clone();
        let epochs = self.epochs()?;
        let segment = match &pending {
            Some(pending) => Some(open_segment(
                &*self.epochs()?,
                &pending.name,
                &pending.object,
            )?),
            None => None,
        };
        let staged = match &segment {
            Some(segment) => open_blocks(&self.keys, &chat_keys, segment)?,
            None => Vec::new(),
        };
        // The copy gets keys of its own too (two devices never share a signing key), and the id
        // they certify.
        let new_secrets = crate::devices::DeviceSecrets::generate()?;
        let new_device = DeviceId::of_keys(&new_secrets.public());
        let old_device = self.device_id();
        let sealed_secrets = identity::seal(&self.keys, &new_secrets)?;
        // The copied keys stay, set aside: with them the copy can sign its own roster entry as
        // the device it was copied from (docs/DEVICES.md).
        let copied_secrets = identity::seal(&self.keys, &*lock(&self.device_secrets)?)?;
        // The clock's lock before the local state's, in the order `record` takes them.
        let mut clock = lock(&self.clock)?;
        let mut local = lock(&self.local)?;
        let outbox = local.outbox(usize::MAX)?;
        let waiting = match &outbox {
            Some((_, batch)) => batch.decode_operations()?,
            None => Vec::new(),
        };
        // Readers accept only operations stamped by a segment's own device, and the other copy
        // issues the same stamps: everything not pushed yet is stamped again, as new events of
        // the new device (after everything this copy has seen, so each still wins here).
        let mut new_clock = Clock::new(new_device, clock.last());
        if let Some(greatest) = local.greatest_stamp() {
            new_clock.observe(greatest);
        }
        let now = self.now_ms();
        let restamp = |operations: Vec<Operation>, clock: &mut Clock| -> Result<Vec<Operation>> {
            operations
                .into_iter()
                .map(|operation| {
                    Ok(Operation {
                        stamp: clock.tick(now)?,
                        change: operation.change,
                    })
                })
                .collect()
        };
        let staged = restamp(staged, &mut new_clock)?;
        let waiting = restamp(waiting, &mut new_clock)?;
        // Every head this copy applied stays, its old id's included: from now on that id is
        // another device whose next segments (the other copy's) this copy pulls.
        let seen: Vec<Head> = local.heads()?;
        // Resealed in the newest epoch, each chat under a key of that epoch (drawn here if the
        // segment was staged in an earlier one), granted with it.
        let epoch = epochs.newest().0;
        let mut minted = Vec::new();
        let resealed = match &segment {
            Some(segment) => {
                let mut grants: Vec<KeyId> =
                    segment.grants.iter().map(|grant| grant.key_id).collect();
                for operation in &staged {
                    let chat_id = operation.change.chat_id();
                    if chat_keys.writing_key(chat_id, epoch).is_none() {
                        let key_id = chat_keys.mint(chat_id, epoch)?;
                        grants.push(key_id);
                        if let Some((chat, key)) = chat_keys.key(&key_id) {
                            minted.push(crate::sync::segment::KeyGrant {
                                key_id,
                                chat_id: chat.to_owned(),
                                key: key.clone(),
                                epoch,
                            });
                        }
                    }
                }
                let (name, object, hash) = seal_segment(
                    &*epochs,
                    &chat_keys,
                    &NewSegment {
                        device: new_device,
                        seq: 1,
                        tag: random_tag()?,
                        previous: None,
                        seen: &seen,
                        grants: &grants,
                        operations: &EncodedBatch::from_operations(&staged),
                        device_name: &self.info.name,
                        platform: &self.info.platform,
                        signer: Some(&new_secrets),
                    },
                )?;
                Some(PendingSegment {
                    seq: 1,
                    name,
                    object,
                    hash,
                })
            }
            None => None,
        };
        let waiting_batch = EncodedBatch::from_operations(&waiting);
        let restamped: Vec<Operation> = staged.into_iter().chain(waiting).collect();
        local.replace_identity(
            &restamped,
            outbox.as_ref().map(|(last, _)| (*last, &waiting_batch)),
            |tx| {
                if let (Some(pending), Some(resealed)) = (&pending, &resealed) {
                    local::replace_pending(tx, pending, resealed)?;
                }
                local::set_meta(tx, META_DEVICE_ID, &new_device.0)?;
                local::set_meta(tx, identity::META_DEVICE_SECRETS, &sealed_secrets)?;
                local::set_meta(tx, identity::META_COPIED_DEVICE_SECRETS, &copied_secrets)?;
                local::set_meta(tx, identity::META_COPIED_DEVICE_ID, &old_device.0)?;
                // The new id signs every segment it writes, its first included.
                local::set_meta(tx, identity::META_FIRST_SIGNED_SEQ, &1u64.to_be_bytes())?;
                local::set_meta(tx, identity::META_UNSIGNED_TIPS, &[])?;
                match new_clock.last() {
                    Some(last) => local::set_meta(tx, META_CLOCK, &last.to_sortable_bytes()),
                    None => Ok(()),
                }
            },
        )?;
        *clock = new_clock;
        // Id and keys change together: both locks held, in the order `device_keys` takes them.
        let mut device = match self.device.lock() {
            Ok(device) => device,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut secrets = match self.device_secrets.lock() {
            Ok(secrets) => secrets,
            Err(poisoned) => poisoned.into_inner(),
        };
        *device = new_device;
        *secrets = new_secrets;
        drop(secrets);
        drop(device);
        drop(local);
        drop(clock);
        self.keep_chat_keys(&minted)?;
        Ok(resealed)
    }
}
