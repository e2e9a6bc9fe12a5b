//! Local-filesystem backend: each object is the file `<root>/<key>`.
//!
//! Puts are made durable together: one thread per store takes every put waiting at that moment,
//! creates and writes each file under its final name, and then syncs the filesystem once
//! (`syncfs`) before answering them all. Per file, an fsync of the file and one of its directory
//! cost two cache flushes of the disk and several waits; a burst of puts now shares one flush.
//! `syncfs` also writes out other dirty data of the same filesystem, so a busy store is best on
//! a filesystem of its own; elsewhere than Linux each file and its directory are fsynced.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use super::Error;

/// Puts waiting for the sync thread before new ones wait for room.
const QUEUE: usize = 1024;
/// Bytes one sync writes at most, to bound how long the first put of a batch waits.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Directories remembered as existing, at most.
const KNOWN_DIRS: usize = 4096;

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// The sync thread; it ends when the last clone of the store is dropped.
    puts: mpsc::Sender<Put>,
}

#[derive(Debug)]
struct Put {
    path: PathBuf,
    bytes: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

impl FsStore {
    pub fn new(root: PathBuf) -> Self {
        let (puts, queue) = mpsc::channel(QUEUE);
        let sync_root = root.clone();
        // A store that cannot start its thread answers every put with an error (the sender
        // is closed), which the intake turns into 451: nothing is accepted unstored.
        if let Err(err) = std::thread::Builder::new()
            .name("mxhook-store-sync".to_owned())
            .spawn(move || sync_puts(&sync_root, queue))
        {
            tracing::error!(error = %err, "starting the store's sync thread failed");
        }
        Self { root, puts }
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
        let (done, result) = oneshot::channel();
        let stopped = || std::io::Error::other("the store's sync thread has stopped");
        let outcome = match self
            .puts
            .send(Put {
                path,
                bytes: bytes.to_vec(),
                done,
            })
            .await
        {
            Ok(()) => result.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        outcome.map_err(|source| Error::Write {
            key: key.to_owned(),
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

    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<super::ByteChunks, Error> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    key: key.to_owned(),
                });
            }
            Err(source) => return Err(read_error(key, source)),
        };
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| read_error(key, source))?;
        let left = end.saturating_sub(start);
        let key = key.to_owned();
        Ok(Box::pin(futures_util::stream::try_unfold(
            (file, left, key),
            |(mut file, left, key)| async move {
                if left == 0 {
                    return Ok(None);
                }
                let want = usize::try_from(left)
                    .map_or(super::RANGE_CHUNK, |left| left.min(super::RANGE_CHUNK));
                let mut chunk = bytes::BytesMut::zeroed(want);
                let read = file
                    .read(&mut chunk)
                    .await
                    .map_err(|source| read_error(&key, source))?;
                if read == 0 {
                    return Err(super::short_object(&key, left));
                }
                chunk.truncate(read);
                let left = left - read as u64;
                Ok(Some((chunk.freeze(), (file, left, key))))
            },
        )))
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

impl FsStore {
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        let path = self.path_of(key)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(|source| Error::Read {
                key: key.to_owned(),
                source,
            })
    }

    /// Every file under the root whose key starts with `prefix`, walked without following
    /// links.
    pub async fn list(&self, prefix: &str) -> Result<Vec<super::StoredObject>, Error> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_files(&root, &prefix))
            .await
            .map_err(|err| Error::Read {
                key: String::new(),
                source: std::io::Error::other(err.to_string()),
            })?
    }
}

fn read_error(key: &str, source: std::io::Error) -> Error {
    Error::Read {
        key: key.to_owned(),
        source,
    }
}

fn list_files(root: &Path, prefix: &str) -> Result<Vec<super::StoredObject>, Error> {
    let mut objects = Vec::new();
    let mut dirs = vec![(root.to_owned(), String::new())];
    while let Some((dir, relative)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(read_error(&relative, err)),
        };
        for entry in entries {
            let entry = entry.map_err(|err| read_error(&relative, err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = format!("{relative}{name}");
            let kind = entry.file_type().map_err(|err| read_error(&key, err))?;
            if kind.is_dir() {
                let dir_key = format!("{key}/");
                // Only directories on the way to the prefix, or under it.
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    dirs.push((entry.path(), dir_key));
                }
            } else if kind.is_file() && key.starts_with(prefix) {
                let modified_ms = entry
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |since| {
                        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
                    });
                objects.push(super::StoredObject { key, modified_ms });
            }
        }
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// The sync thread: writes each waiting batch of puts, makes it durable at once, answers it.
fn sync_puts(root: &Path, mut queue: mpsc::Receiver<Put>) {
    let mut known_dirs = HashSet::new();
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.bytes.len();
        let mut batch = vec![first];
        while bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(put) => {
                    bytes += put.bytes.len();
                    batch.push(put);
                }
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(batch.len());
        for put in batch {
            match write_file(&mut known_dirs, &put.path, &put.bytes) {
                Ok(()) => written.push(put),
                Err(err) => {
                    let _ = put.done.send(Err(err));
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        let paths: Vec<&Path> = written.iter().map(|put| put.path.as_path()).collect();
        match make_durable(root, &paths) {
            Ok(()) => {
                for put in written {
                    let _ = put.done.send(Ok(()));
                }
            }
            Err(err) => {
                // Nothing says which files reached the disk: none of them is reported stored.
                for put in written {
                    let _ = std::fs::remove_file(&put.path);
                    let _ = put
                        .done
                        .send(Err(std::io::Error::new(err.kind(), err.to_string())));
                }
            }
        }
    }
}

/// Creates the file under its final name (never over an existing one) and writes it, not yet
/// durable. A crash before the sync can leave a partial file, but no row points at it: a row
/// is committed only after the put returned, and every key is fresh, so a partial object is
/// never read.
fn write_file(known_dirs: &mut HashSet<PathBuf>, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent directory"))?;
    let file = match known_dirs.contains(dir).then(|| create(path)) {
        Some(Ok(file)) => file,
        // Not known, or removed since (an operator cleaned up): made again.
        Some(Err(err)) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {
            std::fs::create_dir_all(dir)?;
            if known_dirs.len() >= KNOWN_DIRS {
                known_dirs.clear();
            }
            known_dirs.insert(dir.to_owned());
            create(path)?
        }
    };
    let mut file = file;
    let written = file.write_all(bytes);
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// A new file; an existing one (a key that was not fresh) is left alone and refused.
fn create(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Makes the written files, their names and any directories made for them durable: one
/// `syncfs` of the store's filesystem.
#[cfg(target_os = "linux")]
fn make_durable(root: &Path, _written: &[&Path]) -> std::io::Result<()> {
    let root = std::fs::File::open(root)?;
    rustix::fs::syncfs(&root)?;
    Ok(())
}

/// Elsewhere, each file and its directory are synced.
#[cfg(not(target_os = "linux"))]
fn make_durable(_root: &Path, written: &[&Path]) -> std::io::Result<()> {
    for path in written {
        std::fs::File::open(path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_are_stored_each_with_its_bytes_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where a put needs a directory: that put cannot be written.
        std::fs::write(dir.path().join("blocked"), b"not a directory").expect("write");
        let store = FsStore::new(dir.path().to_owned());
        let puts = (0..64).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = if i == 17 {
                    "blocked/msg_17.eml".to_owned()
                } else {
                    format!("inbound/a/msg_{i}.eml")
                };
                let result = store.put(&key, format!("message {i}").as_bytes()).await;
                (i, key, result)
            })
        });
        for joined in futures_util::future::join_all(puts).await {
            let (i, key, result) = joined.expect("join");
            if i == 17 {
                assert!(matches!(result, Err(Error::Write { .. })), "{result:?}");
                continue;
            }
            result.expect("put");
            assert_eq!(
                store.get(&key).await.expect("get"),
                format!("message {i}").into_bytes()
            );
        }
    }

    #[tokio::test]
    async fn a_range_streams_exactly_its_bytes_in_bounded_chunks() {
        use futures_util::TryStreamExt as _;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path().to_owned());
        let bytes: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        store.put("inbound/a/msg_1.eml", &bytes).await.expect("put");
        for (start, end) in [(0, 200_000), (1, 2), (70_000, 199_999), (5, 5)] {
            let chunks: Vec<bytes::Bytes> = store
                .get_range("inbound/a/msg_1.eml", start, end)
                .await
                .expect("range")
                .try_collect()
                .await
                .expect("read");
            assert!(chunks.iter().all(|c| c.len() <= super::super::RANGE_CHUNK));
            assert_eq!(chunks.concat(), &bytes[start as usize..end as usize]);
        }
        let past_end = store
            .get_range("inbound/a/msg_1.eml", 199_000, 200_001)
            .await
            .expect("opens")
            .try_collect::<Vec<_>>()
            .await;
        assert!(matches!(past_end, Err(Error::Read { .. })), "{past_end:?}");
        assert!(matches!(
            store.get_range("inbound/a/none.eml", 0, 1).await,
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
