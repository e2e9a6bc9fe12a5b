//! Local-filesystem backend: each object is the file `<root>/<key>`.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use super::Error;

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, Error> {
        let relative = Path::new(key);
        let safe = !key.is_empty()
            && relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)));
        if safe {
            Ok(self.root.join(relative))
        } else {
            Err(Error::BadKey {
                key: key.to_owned(),
            })
        }
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path_of(key)?;
        let bytes = bytes.to_vec();
        let key_owned = key.to_owned();
        // std::fs inside spawn_blocking: tokio::fs would hop to the blocking pool once per call
        // anyway, and fsync must not stall the runtime's worker threads.
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|join| std::io::Error::other(join.to_string()))
            .and_then(|result| result)
            .map_err(|source| Error::Write {
                key: key_owned,
                source,
            })
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                key: key.to_owned(),
            }),
            Err(source) => Err(Error::Read {
                key: key.to_owned(),
                source,
            }),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write {
                key: key.to_owned(),
                source,
            }),
        }
    }
}

/// Temp file in the same directory, fsync, rename, fsync the directory: after a crash the
/// object is either absent or complete, never partial.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("object path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp_path = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp_path, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_round_trip_keeps_bytes_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path().to_owned());
        let bytes = b"Subject: x\r\n\r\nbody\r\n\x00\xff".to_vec();
        store.put("inbound/a/msg_1.eml", &bytes).await.expect("put");
        assert_eq!(store.get("inbound/a/msg_1.eml").await.expect("get"), bytes);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("inbound/a"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
        store.delete("inbound/a/msg_1.eml").await.expect("delete");
        assert!(matches!(
            store.get("inbound/a/msg_1.eml").await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path().to_owned());
        for key in ["../x.eml", "/etc/passwd", "a/../../x", ""] {
            assert!(
                matches!(store.put(key, b"x").await, Err(Error::BadKey { .. })),
                "{key:?} accepted"
            );
        }
    }
}
