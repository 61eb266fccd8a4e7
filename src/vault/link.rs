//! Linking a new device by QR code over the bucket (docs/DEVICES.md, "Linking"): the offering
//! device shows an offer, the joining device answers through `links/<id>/join`, the person types
//! the joiner's check code on the offerer, and the offerer adds the joiner to the roster and
//! answers with `links/<id>/welcome`. The joiner never receives the recovery key.
//!
//! Both sides poll the bucket (a GET of a missing object every [`LINK_POLL`]): stores have no
//! notifications, and a link lasts a minute or two.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::devices::DeviceSecrets;
use crate::keys::{EpochSecret, VaultId};
use crate::link::{
    Channel, Ephemeral, JoinRecord, LinkOffer, LinkPart, MAX_LINK_OBJECT, Welcome, joiner_key,
    link_object_name, open_join, open_welcome, seal_join, seal_welcome,
};
use crate::sync::roster::{RosterChange, RosterEntry, SignedEntry, Signer, roster_name};
use crate::{Error, LinkProblem};

use super::device_key::{self, DeviceKey, Held};
use super::opening::Access;
use super::roster::{VaultDevice, seal_entry};
use super::*;

/// How long an offer lasts unless the app says otherwise.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest an offer may last.
pub const MAX_LINK_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often each side looks for the other's answer.
pub const LINK_POLL: Duration = Duration::from_millis(500);
/// How far the joiner's clock may run ahead of the offerer's before a fresh offer looks expired.
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// An offer this device shows (as a QR code) until a new device answers it. Single use.
pub struct LinkOffering {
    offer: LinkOffer,
    text: String,
    ephemeral: Mutex<Option<Ephemeral>>,
}

impl core::fmt::Debug for LinkOffering {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkOffering")
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

impl LinkOffering {
    /// The text to show as a QR code (it holds no secret: an ephemeral public key, a link id,
    /// the expiry, the vault id and the app's data).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// When the offer expires (Unix ms, this device's clock).
    pub fn expires_at_ms(&self) -> u64 {
        self.offer.expires_at_ms
    }
}

/// A device that answered an offer and waits for the offering device's welcome.
pub struct LinkJoining {
    store: Arc<dyn ObjectStore>,
    state_dir: PathBuf,
    info: DeviceInfo,
    device_key: DeviceKey,
    offer: LinkOffer,
    device: DeviceId,
    check_code: String,
    deadline: tokio::time::Instant,
    /// The channel and the device's secrets, taken by the one `finish` that runs.
    pending: Mutex<Option<(Channel, DeviceSecrets)>>,
}

impl core::fmt::Debug for LinkJoining {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkJoining")
            .field("vault_id", &self.offer.vault_id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn link_key(vault_id: &VaultId, link_id: &[u8; 16], part: LinkPart) -> String {
    format!("{}/{}", vault_id.to_hex(), link_object_name(link_id, part))
}

/// Sleeps one poll interval, or stops with `Cancelled`.
async fn poll_pause(cancel: &CancelToken) -> Result<()> {
    cancel.check()?;
    tokio::time::sleep(LINK_POLL).await;
    cancel.check()
}

impl Vault {
    /// Makes an offer to link a new device, valid for `timeout` (at most an hour). `app_data`
    /// (at most 1,024 bytes) rides in the offer for the app's own use, for example where the
    /// bucket is; never put a secret in it, the offer is shown as a QR code. Complete it with
    /// [`complete_link`](Self::complete_link).
    pub fn offer_link(&self, timeout: Duration, app_data: Vec<u8>) -> Result<LinkOffering> {
        if timeout.is_zero() || timeout > MAX_LINK_TIMEOUT {
            return Err(Error::invalid_input(
                "a link offer lasts between one second and an hour",
            ));
        }
        let ephemeral = Ephemeral::generate()?;
        let offer = LinkOffer {
            offerer_key: ephemeral.public(),
            link_id: crate::random::array()?,
            expires_at_ms: self.now_ms().saturating_add(timeout.as_millis() as u64),
            vault_id: *self.keys.vault_id(),
            app_data,
        };
        Ok(LinkOffering {
            text: offer.to_text()?,
            offer,
            ephemeral: Mutex::new(Some(ephemeral)),
        })
    }

    /// Completes `offering` with the check code the joining device shows, as the person typed
    /// it: waits for the joiner's answer (until the offer expires), checks the code, adds the
    /// joiner to the roster (signed by this device) and answers with what the joiner needs to
    /// open the vault. Returns the new device as the roster lists it.
    ///
    /// One wrong code burns the link (`Link(CheckCodeWrong)`; the joiner gets `Link(Burned)`),
    /// so a bucket that swapped the joiner's key gets one guess in a million. Other errors:
    /// `Link(Expired)`, `Link(NotAllowed)` when this device is not an active device of the
    /// roster, `Link(Burned)` when the offering was used before, `Cancelled`.
    pub async fn complete_link(
        &self,
        offering: &LinkOffering,
        check_code: &str,
        cancel: &CancelToken,
    ) -> Result<VaultDevice> {
        let ephemeral = lock(&offering.ephemeral)?
            .take()
            .ok_or(Error::Link(LinkProblem::Burned))?;
        let offer = &offering.offer;
        let vault_id = *self.keys.vault_id();
        let burn = || async {
            let key = link_key(&vault_id, &offer.link_id, LinkPart::Burned);
            // Best effort: a joiner that never sees it stops at the expiry.
            self.store.put_if_absent(&key, Vec::new()).await.ok();
        };
        // The roster is read, and later written, under the sync lock; the wait between is not
        // (a sync may run meanwhile).
        let roster = {
            let _guard = self.sync_lock.lock().await;
            self.refresh_roster(&mut SyncReport::default()).await?
        };
        if !roster.is_active(self.device_id()) {
            return Err(Error::Link(LinkProblem::NotAllowed));
        }
        if !self.epochs()?.has_confirmed(roster.epoch) {
            // A device active in the roster holds its epoch (its box is in the epoch object);
            // one that does not is revoked or has not synced since the epoch started.
            return Err(Error::Link(LinkProblem::NotAllowed));
        }
        let join_key = link_key(&vault_id, &offer.link_id, LinkPart::Join);
        let object = loop {
            if self.now_ms() >= offer.expires_at_ms {
                burn().await;
                return Err(Error::Link(LinkProblem::Expired));
            }
            if let Some(object) = self.store.get(&join_key, MAX_LINK_OBJECT).await? {
                break object;
            }
            poll_pause(cancel).await?;
        };
        let mut channel = Channel::offerer(ephemeral, offer, &joiner_key(&object)?)?;
        let record = match open_join(&mut channel, &object) {
            Ok(record) => record,
            Err(error) => {
                burn().await;
                return Err(error);
            }
        };
        if let Err(error) = channel.confirm_check_code(check_code) {
            burn().await;
            return Err(error);
        }
        if record.device != DeviceId::of_keys(&record.keys) {
            // A device may add only the id the joiner's key certifies (the fold would not count
            // anything else).
            burn().await;
            return Err(Error::decode(
                crate::format::ObjectKind::LinkMessage,
                crate::DecodeProblem::Malformed("a device id its key does not certify".into()),
            ));
        }
        let _guard = self.sync_lock.lock().await;
        // The lock may have waited behind a long sync: the joiner must still be waiting, or the
        // roster would gain a device that never gets its welcome.
        if self.now_ms() >= offer.expires_at_ms {
            burn().await;
            return Err(Error::Link(LinkProblem::Expired));
        }
        let burned_key = link_key(&vault_id, &offer.link_id, LinkPart::Burned);
        if self
            .store
            .get(&burned_key, MAX_LINK_OBJECT)
            .await?
            .is_some()
            || self.store.get(&join_key, MAX_LINK_OBJECT).await?.is_none()
        {
            return Err(Error::Link(LinkProblem::Burned));
        }
        let roster = self.refresh_roster(&mut SyncReport::default()).await?;
        if roster.devices.contains_key(&record.device) {
            burn().await;
            return Err(Error::invalid_input(
                "the joining device's id is already in the roster",
            ));
        }

        let me = self.device_id();
        let signed = {
            let secrets = lock(&self.device_secrets)?;
            SignedEntry::sign(
                self.keys.vault_id(),
                RosterEntry {
                    signer: Signer::Device(me),
                    parents: roster.tips.clone(),
                    made_at_ms: self.now_ms(),
                    epoch: roster.epoch,
                    change: RosterChange::Add {
                        device: record.device,
                        keys: record.keys,
                        name: record.name.clone(),
                        platform: record.platform.clone(),
                        // A new device signs every segment it writes.
                        first_signed_seq: 1,
                        unsigned_tips: Vec::new(),
                    },
                },
                |message| secrets.sign(message),
            )
        };
        let sealed = seal_entry(&*self.epochs()?, &signed)?;
        self.put_once(&roster_name(&signed.id()), sealed.clone())
            .await?;
        lock(&self.local)?.keep_roster_object(&signed.id(), &sealed)?;
        let roster = self.fold_kept_roster()?;
        *lock(&self.roster)? = Some(Arc::new(roster.clone()));
        let added = roster
            .devices
            .get(&record.device)
            .filter(|device| device.revoked.is_none())
            .ok_or_else(|| {
                Error::LocalState("the roster does not count the entry adding the device".into())
            })?;

        let welcome = Welcome {
            vault_id,
            roster_root: self.roster_root,
            recovery_agreement_key: roster
                .recovery_agreement
                .unwrap_or(self.recovery_agreement_key),
            added_entry: signed.id(),
            epoch: roster.epoch,
            epoch_secret: self
                .epochs()?
                .confirmed_secret(roster.epoch)
                .map(|secret| EpochSecret::from_bytes(*secret.bytes()))
                .ok_or(Error::Link(LinkProblem::NotAllowed))?,
        };
        let answer = seal_welcome(&mut channel, &welcome)?;
        if !self
            .store
            .put_if_absent(
                &link_key(&vault_id, &offer.link_id, LinkPart::Welcome),
                answer,
            )
            .await?
        {
            // Something else wrote a welcome (the bucket): the joiner cannot open it.
            return Err(Error::Link(LinkProblem::Burned));
        }
        Ok(VaultDevice {
            id: record.device,
            name: added.name.clone(),
            platform: added.platform.clone(),
            added_by: added.added_by,
            added_at_ms: added.added_at_ms,
            revoked_at_ms: None,
            is_this_device: false,
        })
    }

    /// Answers the link offer `offer_text` (scanned from the offering device's QR code) as a new
    /// device of its vault, with its state in `state_dir` (which must hold no device yet) and
    /// `device_key` (keep it in the Keychain / Keystore: [`Vault::open_device`] needs it to open
    /// the vault later). Show [`LinkJoining::check_code`] to the person, who types it on the
    /// offering device, then call [`LinkJoining::finish`].
    ///
    /// Fails with `Link(Expired)` for an offer past its expiry, `Link(AlreadyUsed)` when another
    /// device answered it first, `InvalidInput` for text that is not an offer.
    pub async fn join_link(
        store: Arc<dyn ObjectStore>,
        state_dir: &Path,
        info: DeviceInfo,
        offer_text: &str,
        device_key: DeviceKey,
    ) -> Result<LinkJoining> {
        info.check()?;
        let offer = LinkOffer::parse(offer_text)?;
        let now = now_ms();
        if now > offer.expires_at_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(Error::Link(LinkProblem::Expired));
        }
        if state_dir.join(STATE_FILE).exists() || device_key::exists(state_dir) {
            return Err(Error::invalid_input(
                "this state directory already holds a device; a device joins into an empty one",
            ));
        }
        let secrets = DeviceSecrets::generate()?;
        let device = DeviceId::of_keys(&secrets.public());
        let ephemeral = Ephemeral::generate()?;
        let own_key = ephemeral.public();
        let mut channel = Channel::joiner(ephemeral, &offer)?;
        let record = JoinRecord {
            device,
            keys: secrets.public(),
            name: info.name.clone(),
            platform: info.platform.clone(),
        };
        let object = seal_join(&mut channel, &own_key, &record)?;
        let key = link_key(&offer.vault_id, &offer.link_id, LinkPart::Join);
        if !store.put_if_absent(&key, object).await? {
            return Err(Error::Link(LinkProblem::AlreadyUsed));
        }
        // Wait until the offer's expiry by this device's clock, within reason whatever the two
        // clocks say: at least a minute, at most an hour.
        let wait_ms = offer
            .expires_at_ms
            .saturating_sub(now)
            .clamp(60_000, MAX_LINK_TIMEOUT.as_millis() as u64);
        Ok(LinkJoining {
            store,
            state_dir: state_dir.to_owned(),
            info,
            device_key,
            check_code: channel.check_code(),
            offer,
            device,
            deadline: tokio::time::Instant::now() + Duration::from_millis(wait_ms),
            pending: Mutex::new(Some((channel, secrets))),
        })
    }

    /// Lists the vault and brings the roster up to date (see `sync_roster`).
    pub(super) async fn refresh_roster(
        &self,
        report: &mut SyncReport,
    ) -> Result<Arc<crate::sync::roster::Roster>> {
        let listed = self.list_vault().await?;
        let listing = crate::sync::listing::Listing::classify(
            listed.iter().map(|info| (info.key.as_str(), info.size)),
        );
        self.sync_epochs(&listing, report).await?;
        self.sync_roster(&listing, true, report).await
    }
}

impl LinkJoining {
    /// The six-digit code to show; the person types it on the offering device.
    pub fn check_code(&self) -> &str {
        &self.check_code
    }

    /// This device's id, as the roster will list it.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// Waits for the offering device's welcome and opens the vault as this new device. Fails
    /// with `Link(Burned)` when the person typed a wrong code there (or the offerer gave up),
    /// `Link(Expired)` when nothing came before the offer's expiry, `Cancelled`.
    pub async fn finish(&self, cancel: &CancelToken) -> Result<Vault> {
        let (mut channel, secrets) = lock(&self.pending)?
            .take()
            .ok_or(Error::Link(LinkProblem::Burned))?;
        let vault_id = self.offer.vault_id;
        let link_id = self.offer.link_id;
        let cleanup = || async {
            for part in [LinkPart::Join, LinkPart::Welcome, LinkPart::Burned] {
                self.store
                    .delete(&link_key(&vault_id, &link_id, part))
                    .await
                    .ok();
            }
        };
        let welcome_key = link_key(&vault_id, &link_id, LinkPart::Welcome);
        let burned_key = link_key(&vault_id, &link_id, LinkPart::Burned);
        let object = loop {
            if let Some(object) = self.store.get(&welcome_key, MAX_LINK_OBJECT).await? {
                break object;
            }
            if self
                .store
                .get(&burned_key, MAX_LINK_OBJECT)
                .await?
                .is_some()
            {
                cleanup().await;
                return Err(Error::Link(LinkProblem::Burned));
            }
            if tokio::time::Instant::now() >= self.deadline {
                // Tells an offerer that comes late not to add this device.
                self.store.put_if_absent(&burned_key, Vec::new()).await.ok();
                // A welcome that raced the burn still counts.
                if let Some(object) = self.store.get(&welcome_key, MAX_LINK_OBJECT).await? {
                    break object;
                }
                cleanup().await;
                return Err(Error::Link(LinkProblem::Expired));
            }
            poll_pause(cancel).await?;
        };
        let welcome = open_welcome(&mut channel, &object)?;
        if welcome.vault_id != vault_id {
            return Err(Error::Link(LinkProblem::Burned));
        }
        if welcome.epoch == 0 && welcome.epoch_secret.epoch_zero_vault_id() != vault_id {
            // Epoch 0's secret derives the vault id it names (later epochs' secrets are random;
            // the roster entries they open are signed).
            return Err(Error::decode(
                crate::format::ObjectKind::LinkMessage,
                crate::DecodeProblem::Malformed("an epoch secret of another vault".into()),
            ));
        }
        let held = Held {
            vault_id,
            roster_root: welcome.roster_root,
            epoch: welcome.epoch,
            epoch_secret: EpochSecret::from_bytes(*welcome.epoch_secret.bytes()),
            device: self.device,
            secrets: DeviceSecrets::from_bytes(&secrets.to_bytes()),
            recovery_agreement_key: welcome.recovery_agreement_key,
        };
        device_key::write(&self.state_dir, &self.device_key, &held)?;
        let access = Access {
            keys: VaultKeys::for_epoch(vault_id, &welcome.epoch_secret),
            epoch: welcome.epoch,
            epoch_secret: welcome.epoch_secret,
            recovery_secrets: None,
            recovery_agreement_key: welcome.recovery_agreement_key,
            recovery_signer: None,
            roster_root: Some(welcome.roster_root),
            identity: Some((self.device, secrets)),
        };
        let vault = Vault::open_with(
            self.store.clone(),
            &self.state_dir,
            self.info.clone(),
            access,
        )?;
        cleanup().await;
        Ok(vault)
    }
}
