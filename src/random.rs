//! The one place that reads the operating system's CSPRNG.

use crate::error::{Error, Result};

/// Fills `buf` from the OS CSPRNG (getrandom(2), SecRandomCopyBytes, ...).
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}

/// A fresh random array.
pub(crate) fn array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
