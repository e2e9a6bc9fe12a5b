//! Local-filesystem backend: each object is the file `<root>/<key>`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::Error;

/// Directories kept open for their fsync, at most: one per inbox written to recently.
const OPEN_DIRS: usize = 256;

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Open handles of directories known to exist, so a put neither creates nor opens its
    /// directory again to fsync it.
    dirs: Arc<Mutex<HashMap<PathBuf, Arc<std::fs::File>>>>,
}

impl FsStore {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            dirs: Arc::default(),
        }
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
        let dirs = Arc::clone(&self.dirs);
        // std::fs inside spawn_blocking: tokio::fs would hop to the blocking pool once per call
        // anyway, and fsync must not stall the runtime's worker threads.
        tokio::task::spawn_blocking(move || write_durably(&dirs, &path, &bytes))
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

/// The file is created under its final name (never over an existing one), written, fsynced,
/// and then its directory is fsynced so the name survives a crash too. A crash before the end
/// can leave a partial file, but no row points at it: a row is committed only after this
/// returned, and every key is fresh, so a partial object is never read. Writing a temporary
/// file and renaming it would guard against nothing more and cost a rename and a second
/// directory change per message.
fn write_durably(
    dirs: &Mutex<HashMap<PathBuf, Arc<std::fs::File>>>,
    path: &Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    let dir_path = path
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent directory"))?;
    let cached = dirs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(dir_path)
        .cloned();
    let (dir, file) = match cached.map(|dir| (create(path), dir)) {
        Some((Ok(file), dir)) => (dir, file),
        // Not cached, or removed since it was (an operator cleaned up): made again.
        Some((Err(err), _)) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {
            std::fs::create_dir_all(dir_path)?;
            let dir = Arc::new(std::fs::File::open(dir_path)?);
            let file = create(path)?;
            let mut dirs = dirs.lock().unwrap_or_else(PoisonError::into_inner);
            if dirs.len() >= OPEN_DIRS {
                dirs.clear();
            }
            dirs.insert(dir_path.to_owned(), Arc::clone(&dir));
            (dir, file)
        }
    };
    let written = (|| {
        let mut file = file;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    dir.sync_all()
}

/// A new file; an existing one (a key that was not fresh) is left alone and refused.
fn create(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
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
    async fn a_directory_removed_after_use_is_made_again_and_no_object_is_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path().to_owned());
        store
            .put("inbound/a/msg_1.eml", b"first")
            .await
            .expect("put");
        std::fs::remove_dir_all(dir.path().join("inbound/a")).expect("remove");
        store
            .put("inbound/a/msg_2.eml", b"second")
            .await
            .expect("put after removal");
        assert_eq!(
            store.get("inbound/a/msg_2.eml").await.expect("get"),
            b"second"
        );
        assert!(matches!(
            store.put("inbound/a/msg_2.eml", b"other").await,
            Err(Error::Write { .. })
        ));
        assert_eq!(
            store.get("inbound/a/msg_2.eml").await.expect("get"),
            b"second",
            "an existing object was overwritten or removed"
        );
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
