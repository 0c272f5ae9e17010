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
//!
//! **Group commit.** Writers that come together share one durable commit, so four
//! writers pay for about one `fsync`, not four. A [`Store::write`] closure writes into a
//! change set of its own (reading through it to the shared transaction); when the closure
//! returns `Ok` its changes are applied to the group's open transaction, and when it fails
//! or panics they are dropped, so each closure is still all or nothing. Closures run one
//! at a time, in arrival order, each seeing the changes of those before it. The writer
//! that finds nobody else arriving commits the group's transaction, durably, and every
//! writer of it returns only then — with the commit's error if it failed. So an `Ok` still
//! means "on disk", a reader ([`Store::read`]) sees only what is on disk, and a crash
//! loses a whole group or nothing of it. A writer alone commits at once, as before.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use purveyor_model::Instance;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::ProviderError;

/// How long [`Store::open_at`] waits for a previous process of the same provider (killed
/// or exiting) to let go of the database.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// The longest a group smaller than the last one waits for more writers.
const MAX_LINGER: Duration = Duration::from_millis(2);

/// A provider's database.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    /// Writers about to take `group`: while there are any, nobody commits.
    arriving: AtomicUsize,
    group: Mutex<Group>,
    outcomes: Mutex<HashMap<u64, Outcome>>,
    /// Signalled when a group's commit has an outcome.
    settled: Condvar,
    /// Signalled when a writer joins the group.
    joined: Condvar,
    /// How long the last commit took, in µs.
    last_commit_us: AtomicU64,
}

/// The group transaction being filled.
#[derive(Default)]
struct Group {
    tx: Option<redb::WriteTransaction>,
    /// The number of the group being filled; groups commit in this order.
    number: u64,
    /// Writers whose changes are in `tx`.
    members: usize,
    /// Writers in the last group committed.
    last_members: usize,
}

/// How a group's commit went, until each of its members has taken it.
struct Outcome {
    result: Result<(), String>,
    waiting: usize,
}

/// A read-only snapshot: sees every transaction committed before it began.
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

/// A write transaction. Changes are visible to it at once and to others after commit.
pub struct WriteTx<'g> {
    /// The group's transaction, read through.
    base: &'g redb::WriteTransaction,
    /// This transaction's changes, by table and key: `None` removes.
    changes: BTreeMap<(String, String), Option<Vec<u8>>>,
}

pub use crate::state_dir;

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
                        arriving: AtomicUsize::new(0),
                        group: Mutex::default(),
                        outcomes: Mutex::default(),
                        settled: Condvar::new(),
                        joined: Condvar::new(),
                        last_commit_us: AtomicU64::new(0),
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
    /// error (or a panic) drops its changes, leaving nothing of it behind. Returns once
    /// the changes are on disk. Concurrent writers share a commit (see the module's
    /// documentation); their closures run one at a time.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let mut group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        self.arriving.fetch_sub(1, Ordering::SeqCst);
        if group.tx.is_none() {
            let tx = self
                .db
                .begin_write()
                .map_err(|e| failed(&self.path, "cannot begin writing", e))?;
            group.tx = Some(tx);
        }
        let number = group.number;
        let out = self.join(&mut group, f);
        self.commit_if_last(group);
        match out {
            Err(panic) => resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Ok(Ok(out)) => {
                self.outcome(number)?;
                Ok(out)
            }
        }
    }

    /// Runs `f` on a change set over the group's transaction, and applies its changes if
    /// it succeeds. Applying can fail half way: then the whole group is abandoned and
    /// every member of it told why.
    fn join<T>(
        &self,
        group: &mut Group,
        f: impl FnOnce(&mut WriteTx) -> Result<T, ProviderError>,
    ) -> std::thread::Result<Result<T, ProviderError>> {
        let base = group.tx.as_ref().expect("a group transaction is open");
        let mut tx = WriteTx {
            base,
            changes: BTreeMap::new(),
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(&mut tx)));
        if !matches!(out, Ok(Ok(_))) {
            return out;
        }
        let changes = std::mem::take(&mut tx.changes);
        if let Err(e) = apply(base, changes) {
            let why = failed(&self.path, "cannot apply the changes", e);
            group.tx = None;
            // The members before this writer wait for the group's outcome; this one is
            // told here.
            if group.members > 0 {
                self.settle(group.number, group.members, Err(why.to_string()));
            }
            group.number += 1;
            group.members = 0;
            return Ok(Err(why));
        }
        group.members += 1;
        self.joined.notify_all();
        out
    }

    /// Commits the group if it has members and nobody else is arriving to join it; an
    /// open transaction nobody joined is dropped. A group smaller than the last one
    /// lingers first, for at most as long as the last commit took, for the last group's
    /// writers to come back (their next changes would otherwise wait for this commit and
    /// then take one of their own).
    fn commit_if_last(&self, mut group: MutexGuard<'_, Group>) {
        let number = group.number;
        let linger =
            Duration::from_micros(self.last_commit_us.load(Ordering::Relaxed)).min(MAX_LINGER);
        let give_up = Instant::now() + linger;
        loop {
            if self.arriving.load(Ordering::SeqCst) > 0 || group.number != number {
                return;
            }
            if group.members == 0 {
                group.tx = None;
                return;
            }
            let now = Instant::now();
            if group.members >= group.last_members || now >= give_up {
                break;
            }
            group = self
                .joined
                .wait_timeout(group, give_up - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let tx = group.tx.take();
        let members = group.members;
        group.number += 1;
        group.members = 0;
        group.last_members = members;
        // The next group's first writer waits in `begin_write` until this commit is done.
        drop(group);
        let started = Instant::now();
        let result = match tx {
            Some(tx) => tx
                .commit()
                .map_err(|e| failed(&self.path, "commit failed", e).to_string()),
            None => Err("the group's transaction is gone".to_string()),
        };
        self.last_commit_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.settle(number, members, result);
    }

    fn settle(&self, number: u64, members: usize, result: Result<(), String>) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes.insert(
            number,
            Outcome {
                result,
                waiting: members,
            },
        );
        self.settled.notify_all();
    }

    /// Waits for the outcome of group `number`'s commit.
    fn outcome(&self, number: u64) -> Result<(), ProviderError> {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(o) = outcomes.get_mut(&number) {
                o.waiting -= 1;
                let result = o.result.clone();
                if o.waiting == 0 {
                    outcomes.remove(&number);
                }
                return result.map_err(ProviderError::Failed);
            }
            outcomes = self
                .settled
                .wait(outcomes)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Applies a change set to the group's transaction.
fn apply(
    base: &redb::WriteTransaction,
    changes: BTreeMap<(String, String), Option<Vec<u8>>>,
) -> Result<(), redb::Error> {
    let mut open: Option<(String, redb::Table<'_, &'static str, &'static [u8]>)> = None;
    for ((table_name, key), value) in changes {
        if open.as_ref().is_none_or(|(name, _)| *name != table_name) {
            open = Some((table_name.clone(), base.open_table(table(&table_name))?));
        }
        let (_, t) = open.as_mut().expect("opened above");
        match value {
            Some(v) => {
                t.insert(key.as_str(), v.as_slice())?;
            }
            None => {
                t.remove(key.as_str())?;
            }
        }
    }
    Ok(())
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

impl WriteTx<'_> {
    /// The value under `key` in `table`, as this transaction left it.
    pub fn get(&self, table_name: &str, key: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        if let Some(change) = self.changes.get(&(table_name.to_string(), key.to_string())) {
            return Ok(change.clone());
        }
        match self.base.open_table(table(table_name)) {
            Ok(t) => get_in(&t, key),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Every entry of `table`, in key order, as this transaction left it.
    pub fn entries(&self, table_name: &str) -> Result<Vec<(String, Vec<u8>)>, ProviderError> {
        let t = self
            .base
            .open_table(table(table_name))
            .map_err(store_error)?;
        let mut all: BTreeMap<String, Vec<u8>> = entries_in(&t)?.into_iter().collect();
        let from = (table_name.to_string(), String::new());
        for ((name, key), value) in self.changes.range(from..) {
            if name != table_name {
                break;
            }
            match value {
                Some(v) => all.insert(key.clone(), v.clone()),
                None => all.remove(key),
            };
        }
        Ok(all.into_iter().collect())
    }

    pub fn insert(
        &mut self,
        table_name: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), ProviderError> {
        self.changes.insert(
            (table_name.to_string(), key.to_string()),
            Some(value.to_vec()),
        );
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, table_name: &str, key: &str) -> Result<bool, ProviderError> {
        let was = self.get(table_name, key)?.is_some();
        self.changes
            .insert((table_name.to_string(), key.to_string()), None);
        Ok(was)
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

    /// Many writers at once, some failing and some panicking: each successful closure's
    /// changes are there in full, no failed one left anything, and no read-modify-write
    /// of a shared counter was lost (closures ran one at a time).
    #[test]
    fn concurrent_writers_share_commits_and_stay_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open_at(&path).unwrap();
        const THREADS: usize = 8;
        const EACH: usize = 30;
        let succeeded = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (store, succeeded) = (&store, &succeeded);
                s.spawn(move || {
                    for i in 0..EACH {
                        let key = format!("t{t}-{i}");
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            store.write(|tx| {
                                let n = tx.get("count", "n")?.map_or(0, |b| b[0] as usize);
                                tx.insert("count", "n", &[(n + 1) as u8 % 255])?;
                                tx.insert("keys", &key, b"x")?;
                                match i % 15 {
                                    3 | 6 | 9 | 12 => {
                                        Err(ProviderError::InvalidArgument("no".into()))
                                    }
                                    5 | 10 => panic!("a provider bug"),
                                    _ => Ok(()),
                                }
                            })
                        }));
                        if matches!(result, Ok(Ok(()))) {
                            succeeded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let succeeded = succeeded.into_inner();
        assert_eq!(succeeded, THREADS * EACH * 9 / 15);
        drop(store);
        let store = Store::open_at(&path).unwrap();
        let keys = store.read(|tx| tx.entries("keys")).unwrap();
        assert_eq!(keys.len(), succeeded);
        assert!(keys.iter().all(|(k, _)| {
            let i: usize = k.rsplit('-').next().unwrap().parse().unwrap();
            !matches!(i % 15, 3 | 5 | 6 | 9 | 10 | 12)
        }));
        let n = store.read(|tx| tx.get("count", "n")).unwrap().unwrap()[0] as usize;
        assert_eq!(n, succeeded % 255, "a lost update: closures overlapped");
    }

    #[test]
    fn a_transaction_reads_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_at(&dir.path().join("s.redb")).unwrap();
        store
            .write(|tx| {
                tx.insert("t", "a", b"1")?;
                tx.insert("t", "b", b"2")?;
                tx.insert("u", "z", b"9")
            })
            .unwrap();
        store
            .write(|tx| {
                assert!(tx.remove("t", "a")?);
                assert!(!tx.remove("t", "nothing")?);
                tx.insert("t", "c", b"3")?;
                assert_eq!(tx.get("t", "a")?, None);
                assert_eq!(tx.get("t", "c")?, Some(b"3".to_vec()));
                let keys: Vec<String> = tx.entries("t")?.into_iter().map(|(k, _)| k).collect();
                assert_eq!(keys, ["b", "c"]);
                Ok(())
            })
            .unwrap();
        let keys: Vec<String> = store
            .read(|tx| tx.entries("t"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["b", "c"]);
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
