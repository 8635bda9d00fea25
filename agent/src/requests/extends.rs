//! A grantee's request to extend their live grant (`portcullis extend` run
//! by the grantee): an ordinary request that also names the grant, so its
//! approval extends that grant instead of opening a new one.
use super::{RequestBook, RequestError};

impl RequestBook {
    /// Marks the just-opened request `id` as extending grant `grant_id`.
    pub(crate) fn mark_extends(&mut self, id: u64, grant_id: u64) -> Result<(), RequestError> {
        let r = self
            .requests
            .get_mut(&id)
            .ok_or(RequestError::NotFound(id))?;
        r.extends = Some(grant_id);
        Ok(())
    }
}
