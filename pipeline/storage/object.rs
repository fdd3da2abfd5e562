//! One object named on the command line (a catalog, a ledger): its store, its key, its URL.

use std::sync::Arc;

use super::{Location, S3Options, Store};

/// An object named by a URL (a path, `file://…` or `s3://bucket/key`): the store that holds it,
/// its key there, and the URL as given (for messages and records).
#[derive(Debug, Clone)]
pub struct ObjectRef {
    pub store: Arc<dyn Store>,
    pub key: String,
    pub url: String,
}

impl ObjectRef {
    /// Opens the store holding the object at `url`. Nothing is read yet.
    pub fn open(url: &str, options: &S3Options) -> anyhow::Result<ObjectRef> {
        let location = Location::parse(url)?;
        // The store is the object's folder (local) or its parent prefix (S3), so that relative
        // references in the object (a catalog's clip URIs) resolve beside it.
        let (parent, key) = match &location {
            Location::S3 { bucket, prefix } if prefix.contains('/') => {
                let (dir, name) = prefix.rsplit_once('/').expect("contains a slash");
                (
                    Location::S3 {
                        bucket: bucket.clone(),
                        prefix: dir.to_owned(),
                    },
                    name.to_owned(),
                )
            }
            _ => location
                .split_object()
                .ok_or_else(|| anyhow::anyhow!("{url} names a bucket or folder, not an object"))?,
        };
        // The file named here is read the way the system resolves its path (it may be a link
        // to the current version); stores of folders ClearFrame writes follow no links.
        let store: Arc<dyn Store> = match parent {
            Location::Local(dir) => Arc::new(super::LocalStore::reading_named_file(dir)),
            s3 @ Location::S3 { .. } => super::open_location(s3, options)?,
        };
        Ok(ObjectRef {
            store,
            key,
            url: url.to_owned(),
        })
    }

    /// Reads the whole object, one state of it even while another process rewrites it
    /// ([`Store::get_settled`]).
    pub fn get(&self) -> anyhow::Result<bytes::Bytes> {
        Ok(self.store.get_settled(&self.key)?)
    }
}
