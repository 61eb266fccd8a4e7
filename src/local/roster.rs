//! The roster entries this device has fetched, kept as the sealed objects the bucket held, so
//! that each entry is fetched once and a bucket that later drops one cannot take it back.

use rusqlite::params;

use super::{LocalState, db_error};
use crate::error::Result;
use crate::sync::roster::EntryId;

impl LocalState {
    /// Every roster entry kept: (entry id, sealed object).
    pub fn roster_objects(&self) -> Result<Vec<(EntryId, Vec<u8>)>> {
        let mut statement = self
            .connection
            .prepare("SELECT id, object FROM roster_entries ORDER BY id")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_error)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, object) = row.map_err(db_error)?;
            let id: EntryId = id
                .try_into()
                .map_err(|_| super::corrupt("roster entry id"))?;
            out.push((id, object));
        }
        Ok(out)
    }

    /// The ids of the roster entries kept (without their objects: what a sync compares with the
    /// listing).
    pub fn roster_ids(&self) -> Result<std::collections::BTreeSet<EntryId>> {
        let mut statement = self
            .connection
            .prepare("SELECT id FROM roster_entries")
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .map_err(db_error)?;
        let mut ids = std::collections::BTreeSet::new();
        for row in rows {
            let id = row.map_err(db_error)?;
            ids.insert(
                id.try_into()
                    .map_err(|_| super::corrupt("roster entry id"))?,
            );
        }
        Ok(ids)
    }

    /// Keeps the sealed object of roster entry `id` (a second copy of an id is ignored: the id is
    /// the hash of the signed entry, so both are the same entry).
    pub fn keep_roster_object(&self, id: &EntryId, object: &[u8]) -> Result<()> {
        self.connection
            .execute(
                "INSERT OR IGNORE INTO roster_entries (id, object) VALUES (?1, ?2)",
                params![&id[..], object],
            )
            .map(|_| ())
            .map_err(db_error)
    }
}
