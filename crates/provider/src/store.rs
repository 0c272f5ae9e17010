//! The transactional store for providers that write (feature `store`).
//!
//! The host may stop a provider at any moment — an idle unload, a missed deadline, a
//! crash, the daemon killed — so a provider that changes state keeps it here: one
//! [redb](https://docs.rs/redb) database per provider, in the state directory. A
//! [`Store::write`] transaction commits durably (fsync) when its closure returns `Ok`, and
//! not at all when it returns an error, panics, or the process dies first. Answer a put,
//! delete or call only after its transaction has committed: then every acknowledged
//! change survives, and no change is ever half applied.
//!
//! Tables map string keys to bytes; [`WriteTx::put_instance`] and
//! [`ReadTx::instance`] store whole instances (postcard-encoded).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use purveyor_model::Instance;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::ProviderError;

/// How long [`Store::open_at`] waits for a previous process of the same provider (killed
/// or exiting) to let go of the database.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// A provider's database.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

/// A read-only snapshot: sees every transaction committed before it began.
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

/// A write transaction. Changes are visible to it at once and to others after commit.
pub struct WriteTx {
    tx: redb::WriteTransaction,
}

/// The state directory: `$PURVEYOR_STATE_DIR`; else `/var/lib/purveyor` for root; else
/// `$XDG_STATE_HOME/purveyor` or `~/.local/state/purveyor`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PURVEYOR_STATE_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/lib/purveyor".into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("purveyor");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/purveyor")
}

fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(format!("store {}: {what}: {e}", path.display()))
}

impl Store {
    /// Opens (creating if needed) the store of `provider`: `state_dir()/PROVIDER/store.redb`.
    pub fn open(provider: &str) -> Result<Store, ProviderError> {
        let dir = state_dir().join(provider);
        std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, "cannot create it", e))?;
        Self::open_at(&dir.join("store.redb"))
    }

    /// Opens (creating if needed) the database at `path`. Another process holding it (a
    /// previous instance of this provider that is still going away) is waited for a few
    /// seconds; a corrupt file is an error naming it.
    pub fn open_at(path: &Path) -> Result<Store, ProviderError> {
        let give_up = Instant::now() + OPEN_PATIENCE;
        loop {
            match redb::Database::create(path) {
                Ok(db) => {
                    return Ok(Store {
                        db,
                        path: path.to_owned(),
                    });
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(failed(path, "cannot open it", e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a snapshot.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| failed(&self.path, "cannot begin reading", e))?;
        f(&ReadTx { tx })
    }

    /// Runs `f` in a write transaction and commits it durably if `f` returns `Ok`; an
    /// error (or a panic) aborts it, leaving nothing of it behind. Write transactions
    /// are serialized.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| failed(&self.path, "cannot begin writing", e))?;
        let mut tx = WriteTx { tx };
        let out = f(&mut tx)?;
        tx.tx
            .commit()
            .map_err(|e| failed(&self.path, "commit failed", e))?;
        Ok(out)
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

fn store_error(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(format!("store: {e}"))
}

fn decode_instance(table: &str, key: &str, bytes: &[u8]) -> Result<Instance, ProviderError> {
    postcard::from_bytes(bytes).map_err(|e| {
        ProviderError::Failed(format!(
            "store: table {table:?}, key {key:?} does not hold an instance: {e}"
        ))
    })
}

/// Reads shared by snapshots and write transactions.
fn get_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, ProviderError> {
    Ok(table
        .get(key)
        .map_err(store_error)?
        .map(|v| v.value().to_vec()))
}

fn entries_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, ProviderError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(store_error)? {
        let (k, v) = entry.map_err(store_error)?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

impl ReadTx {
    /// The value under `key` in `table` (a table never written reads as empty).
    pub fn get(&self, table_name: &str, key: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        match self.tx.open_table(table(table_name)) {
            Ok(t) => get_in(&t, key),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Every entry of `table`, in key order.
    pub fn entries(&self, table_name: &str) -> Result<Vec<(String, Vec<u8>)>, ProviderError> {
        match self.tx.open_table(table(table_name)) {
            Ok(t) => entries_in(&t),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The instance stored under `key`.
    pub fn instance(&self, table_name: &str, key: &str) -> Result<Option<Instance>, ProviderError> {
        self.get(table_name, key)?
            .map(|b| decode_instance(table_name, key, &b))
            .transpose()
    }

    /// Every instance in `table`, in key order.
    pub fn instances(&self, table_name: &str) -> Result<Vec<Instance>, ProviderError> {
        self.entries(table_name)?
            .into_iter()
            .map(|(k, b)| decode_instance(table_name, &k, &b))
            .collect()
    }
}

impl WriteTx {
    pub fn get(&self, table_name: &str, key: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        let t = self.tx.open_table(table(table_name)).map_err(store_error)?;
        get_in(&t, key)
    }

    pub fn entries(&self, table_name: &str) -> Result<Vec<(String, Vec<u8>)>, ProviderError> {
        let t = self.tx.open_table(table(table_name)).map_err(store_error)?;
        entries_in(&t)
    }

    pub fn insert(
        &mut self,
        table_name: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), ProviderError> {
        let mut t = self.tx.open_table(table(table_name)).map_err(store_error)?;
        t.insert(key, value).map_err(store_error)?;
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, table_name: &str, key: &str) -> Result<bool, ProviderError> {
        let mut t = self.tx.open_table(table(table_name)).map_err(store_error)?;
        Ok(t.remove(key).map_err(store_error)?.is_some())
    }

    pub fn instance(&self, table_name: &str, key: &str) -> Result<Option<Instance>, ProviderError> {
        self.get(table_name, key)?
            .map(|b| decode_instance(table_name, key, &b))
            .transpose()
    }

    pub fn put_instance(
        &mut self,
        table_name: &str,
        key: &str,
        instance: &Instance,
    ) -> Result<(), ProviderError> {
        let bytes = postcard::to_allocvec(instance).map_err(store_error)?;
        self.insert(table_name, key, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::Value;

    #[test]
    fn commits_on_ok_and_leaves_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open_at(&path).unwrap();
        let a = Instance::from_pairs([("name", Value::String("a".into())), ("n", Value::U64(1))]);
        store.write(|tx| tx.put_instance("t", "a", &a)).unwrap();
        let failed: Result<(), _> = store.write(|tx| {
            tx.remove("t", "a")?;
            tx.insert("t", "b", b"x")?;
            Err(ProviderError::InvalidArgument("no".into()))
        });
        assert!(failed.is_err());
        drop(store);
        let store = Store::open_at(&path).unwrap();
        let all = store.read(|tx| tx.instances("t")).unwrap();
        assert_eq!(all, vec![a]);
        assert_eq!(store.read(|tx| tx.get("t", "b")).unwrap(), None);
        assert_eq!(store.read(|tx| tx.entries("never")).unwrap(), vec![]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, b"not a database, just some bytes that go on a while").unwrap();
        let err = Store::open_at(&path).err().unwrap().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
