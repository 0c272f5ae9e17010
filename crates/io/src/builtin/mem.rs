//! `MEM `: named memory buffers, kept apart per user, under a byte quota, freed when idle.
//!
//! **Invariants.** A buffer belongs to the uid that created it, and only that uid's
//! requests find it (another user's `a.mem+x` is a different buffer). Every byte of every
//! buffer — in the table or still held by a stream after it was deleted or replaced — is
//! charged to its owner in the [`Ledger`] from the moment it is allocated until it is
//! dropped, so the quotas bound what the daemon holds, not only what the table lists.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{IoError, IoName, IoProcedure, IoStream, OpenMode, Requester};

/// How much `MEM ` holds and for how long (`docs/io-procedures.md`, "MEM ").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// The bytes one user's buffers may hold together.
    pub per_user: u64,
    /// The bytes every user's buffers may hold together.
    pub total: u64,
    /// A buffer that no stream has open and nobody opened for this long is freed.
    pub idle: Duration,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            per_user: 64 << 20,
            total: 256 << 20,
            idle: Duration::from_secs(15 * 60),
        }
    }
}

/// `MEM `: named memory buffers. `scratch.mem+a` is buffer `a` of `scratch.mem`; writing
/// creates it, reading it back gives the same bytes, to the same user only.
#[derive(Debug)]
pub struct Memory {
    limits: MemoryLimits,
    table: Mutex<HashMap<(u32, String), Buffer>>,
    ledger: Arc<Ledger>,
    last_sweep: Mutex<Instant>,
}

/// What a buffer's table entry costs beyond its name, charged to its owner.
const ENTRY_COST: u64 = 128;

impl Default for Memory {
    fn default() -> Self {
        Self::new(MemoryLimits::default())
    }
}

type Buffer = Arc<Mutex<Bytes>>;

impl Memory {
    pub fn new(limits: MemoryLimits) -> Self {
        Memory {
            limits,
            table: Mutex::new(HashMap::new()),
            ledger: Arc::new(Ledger {
                limits,
                held: Mutex::new(Held::default()),
            }),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub fn limits(&self) -> MemoryLimits {
        self.limits
    }

    /// The bytes `uid`'s buffers hold now (with those only a stream still holds).
    pub fn bytes_of(&self, uid: u32) -> u64 {
        self.ledger.lock().by_user.get(&uid).copied().unwrap_or(0)
    }

    /// The bytes every buffer holds now.
    pub fn bytes(&self) -> u64 {
        self.ledger.lock().total
    }

    /// The buffers in the table now, for every user.
    pub fn buffers(&self) -> usize {
        self.lock().len()
    }

    /// Frees every buffer that no stream holds and nobody used for the idle time; returns
    /// how many. Runs on every open, rename and delete, and a host may call it on a timer.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut table = self.lock();
        let before = table.len();
        table.retain(|_, buffer| {
            Arc::strong_count(buffer) > 1
                || now.saturating_duration_since(lock(buffer).used) < self.limits.idle
        });
        before - table.len()
    }

    /// [`Memory::sweep`], at most once per quarter of the idle time (and per second):
    /// an open does not pay for scanning every buffer each time.
    fn sweep_if_due(&self, now: Instant) {
        let every = (self.limits.idle / 4).max(Duration::from_secs(1));
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if now.saturating_duration_since(*last) < every {
                return;
            }
            *last = now;
        }
        self.sweep(now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, String), Buffer>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(name: &IoName) -> String {
        format!("{}+{}", name.path.display(), name.element)
    }

    fn missing(who: &Requester, key: &str) -> IoError {
        IoError::NotFound(format!(
            "memory buffer {key} (of uid {}: buffers are per user)",
            who.uid
        ))
    }
}

impl IoProcedure for Memory {
    fn describe(&self) -> String {
        "memory buffers, per user".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        self.open_for(&Requester::this_process(), name, mode)
    }

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        self.rename_for(&Requester::this_process(), from, to)
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        self.delete_for(&Requester::this_process(), name)
    }

    fn open_for(
        &self,
        who: &Requester,
        name: &IoName,
        mode: OpenMode,
    ) -> Result<Box<dyn IoStream>, IoError> {
        let now = Instant::now();
        self.sweep_if_due(now);
        let key = Self::key(name);
        let mut table = self.lock();
        let buffer = match mode {
            OpenMode::Write => {
                // The buffer this one replaces goes first (its bytes come back unless a
                // stream still holds them).
                drop(table.remove(&(who.uid, key.clone())));
                // A buffer costs its name and its entry too, even empty: a user cannot
                // park millions of empty buffers.
                let base = key.len() as u64 + ENTRY_COST;
                self.ledger.charge(who.uid, base)?;
                let buffer = Arc::new(Mutex::new(Bytes {
                    data: Vec::new(),
                    base,
                    owner: who.uid,
                    ledger: self.ledger.clone(),
                    used: now,
                }));
                table.insert((who.uid, key), buffer.clone());
                buffer
            }
            OpenMode::Read | OpenMode::ReadWrite => {
                let buffer = table
                    .get(&(who.uid, key))
                    .ok_or_else(|| Self::missing(who, &Self::key(name)))?;
                lock(buffer).used = now;
                buffer.clone()
            }
        };
        Ok(Box::new(MemStream {
            buffer,
            position: 0,
        }))
    }

    fn rename_for(&self, who: &Requester, from: &IoName, to: &IoName) -> Result<(), IoError> {
        self.sweep_if_due(Instant::now());
        let mut table = self.lock();
        let buffer = table
            .remove(&(who.uid, Self::key(from)))
            .ok_or_else(|| Self::missing(who, &Self::key(from)))?;
        lock(&buffer).used = Instant::now();
        table.insert((who.uid, Self::key(to)), buffer);
        Ok(())
    }

    fn delete_for(&self, who: &Requester, name: &IoName) -> Result<(), IoError> {
        self.sweep_if_due(Instant::now());
        self.lock()
            .remove(&(who.uid, Self::key(name)))
            .map(drop)
            .ok_or_else(|| Self::missing(who, &Self::key(name)))
    }
}

/// What every user's buffers hold, charged as they grow and released as they drop.
#[derive(Debug)]
struct Ledger {
    limits: MemoryLimits,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: u64,
    by_user: HashMap<u32, u64>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `more` bytes to `uid`, or refuses naming the limit it would pass.
    fn charge(&self, uid: u32, more: u64) -> Result<(), IoError> {
        let mut held = self.lock();
        let mine = held.by_user.get(&uid).copied().unwrap_or(0);
        let limit = |what: &str, now: u64, limit: u64| IoError::Os {
            what: format!(
                "memory buffers: {what} would pass its limit of {} ({} held now, {} more asked)",
                bytes(limit),
                bytes(now),
                bytes(more)
            ),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        if mine.saturating_add(more) > self.limits.per_user {
            return Err(limit(
                &format!("uid {uid}'s quota (io.mem_per_user)"),
                mine,
                self.limits.per_user,
            ));
        }
        if held.total.saturating_add(more) > self.limits.total {
            return Err(limit(
                "the host's total (io.mem_total)",
                held.total,
                self.limits.total,
            ));
        }
        held.total += more;
        *held.by_user.entry(uid).or_default() += more;
        Ok(())
    }

    fn release(&self, uid: u32, less: u64) {
        let mut held = self.lock();
        held.total = held.total.saturating_sub(less);
        if let Some(mine) = held.by_user.get_mut(&uid) {
            *mine = mine.saturating_sub(less);
            if *mine == 0 {
                held.by_user.remove(&uid);
            }
        }
    }
}

/// `65536 bytes`, `64 MiB`.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// A buffer's bytes, charged to its owner while they exist.
#[derive(Debug)]
struct Bytes {
    data: Vec<u8>,
    /// What the buffer costs beyond its data (its name and table entry), charged with it.
    base: u64,
    owner: u32,
    ledger: Arc<Ledger>,
    /// When a stream last opened, read or wrote it.
    used: Instant,
}

fn lock(buffer: &Buffer) -> std::sync::MutexGuard<'_, Bytes> {
    buffer.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Bytes {
    fn drop(&mut self) {
        self.ledger
            .release(self.owner, self.data.len() as u64 + self.base);
    }
}

struct MemStream {
    buffer: Buffer,
    position: u64,
}

impl MemStream {
    /// The buffer, marked used now.
    fn lock(&self) -> std::sync::MutexGuard<'_, Bytes> {
        let mut bytes = lock(&self.buffer);
        bytes.used = Instant::now();
        bytes
    }
}

impl IoStream for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let bytes = self.lock();
        let data = &bytes.data;
        let start = usize::try_from(self.position)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        drop(bytes);
        self.position += n as u64;
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let position = self.position;
        let mut bytes = self.lock();
        let end = position.saturating_add(buf.len() as u64);
        let len = bytes.data.len() as u64;
        if end > len {
            // Charged before it is allocated: a refused write allocates nothing.
            bytes.ledger.charge(bytes.owner, end - len)?;
            bytes.data.resize(end as usize, 0);
        }
        let start = position as usize;
        bytes.data[start..start + buf.len()].copy_from_slice(buf);
        drop(bytes);
        self.position = end;
        Ok(buf.len())
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        let len = self.lock().data.len() as i64;
        let target = match pos {
            SeekFrom::Start(n) => i64::try_from(n).unwrap_or(i64::MAX),
            SeekFrom::Current(d) => (self.position as i64).saturating_add(d),
            SeekFrom::End(d) => len.saturating_add(d),
        };
        if target < 0 {
            return Err(IoError::Invalid(format!(
                "seek to {target}: before the start of the buffer"
            )));
        }
        self.position = target as u64;
        Ok(self.position)
    }

    fn size(&self) -> Option<u64> {
        Some(self.lock().data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IoName {
        IoName::parse(s).unwrap()
    }

    fn user(uid: u32) -> Requester {
        Requester {
            uid,
            gid: uid,
            groups: Vec::new(),
        }
    }

    fn write(memory: &Memory, who: &Requester, n: &str, data: &[u8]) -> Result<(), IoError> {
        let mut s = memory.open_for(who, &name(n), OpenMode::Write)?;
        s.write(data)?;
        s.close()
    }

    fn read(memory: &Memory, who: &Requester, n: &str) -> Result<Vec<u8>, IoError> {
        let mut s = memory.open_for(who, &name(n), OpenMode::Read)?;
        let mut out = vec![0; 1024];
        let got = s.read(&mut out)?;
        out.truncate(got);
        Ok(out)
    }

    #[test]
    fn each_user_sees_only_their_own_buffers() {
        let memory = Memory::default();
        write(&memory, &user(0), "/vault.mem+token", b"root's").unwrap();
        write(&memory, &user(1000), "/vault.mem+token", b"alice's").unwrap();
        assert_eq!(
            read(&memory, &user(0), "/vault.mem+token").unwrap(),
            b"root's"
        );
        assert_eq!(
            read(&memory, &user(1000), "/vault.mem+token").unwrap(),
            b"alice's"
        );
        let err = read(&memory, &user(65534), "/vault.mem+token").unwrap_err();
        assert!(matches!(err, IoError::NotFound(_)), "{err}");
        let err = memory
            .delete_for(&user(65534), &name("/vault.mem+token"))
            .unwrap_err();
        assert!(matches!(err, IoError::NotFound(_)), "{err}");
        memory
            .rename_for(&user(1000), &name("/vault.mem+token"), &name("/b.mem+x"))
            .unwrap();
        assert_eq!(
            read(&memory, &user(0), "/vault.mem+token").unwrap(),
            b"root's"
        );
    }

    #[test]
    fn the_quota_refuses_a_write_and_names_the_limit() {
        let memory = Memory::new(MemoryLimits {
            per_user: 1000,
            total: 1700,
            idle: Duration::from_secs(60),
        });
        // A buffer costs its bytes, its name and its entry.
        let entry = |name: &str| name.len() as u64 + ENTRY_COST;
        write(&memory, &user(7), "/a.mem+1", &[1; 600]).unwrap();
        assert_eq!(memory.bytes_of(7), 600 + entry("/a.mem+1"));
        let err = write(&memory, &user(7), "/a.mem+2", &[1; 600]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("uid 7's quota"), "{text}");
        assert!(text.contains("1000 bytes"), "{text}");
        assert_eq!(err.errno(), libc::ENOSPC);
        // The refused write allocated nothing: the user holds the first buffer and the
        // second's (empty) entry.
        assert_eq!(
            memory.bytes_of(7),
            600 + entry("/a.mem+1") + entry("/a.mem+2")
        );
        // Seeking far and writing one byte is charged for the whole gap.
        let mut s = memory
            .open_for(&user(8), &name("/b.mem+x"), OpenMode::Write)
            .unwrap();
        s.seek(SeekFrom::Start(5000)).unwrap();
        assert!(s.write(b"x").is_err());
        drop(s);
        write(&memory, &user(8), "/b.mem+y", &[1; 500]).unwrap();
        // Another user is refused by the total, already when creating a buffer.
        let err = write(&memory, &user(9), "/c.mem+z", &[1; 10]).unwrap_err();
        assert!(err.to_string().contains("the host's total"), "{err}");
        // Deleting and replacing give the bytes back.
        memory.delete_for(&user(8), &name("/b.mem+y")).unwrap();
        memory.delete_for(&user(8), &name("/b.mem+x")).unwrap();
        assert_eq!(memory.bytes_of(8), 0);
        write(&memory, &user(7), "/a.mem+1", b"small").unwrap();
        let seven = 5 + entry("/a.mem+1") + entry("/a.mem+2");
        assert_eq!(memory.bytes_of(7), seven);
        assert_eq!(memory.bytes(), seven);
        // Empty buffers are not free: a user cannot park millions of them.
        let many = (0..100)
            .map(|i| write(&memory, &user(10), &format!("/e.mem+{i}"), b""))
            .filter(Result::is_err)
            .count();
        assert!(many > 90, "{many} of 100 empty buffers refused");
    }

    #[test]
    fn idle_buffers_are_freed_and_open_ones_kept() {
        let memory = Memory::new(MemoryLimits {
            idle: Duration::from_secs(10),
            ..MemoryLimits::default()
        });
        write(&memory, &user(1), "/a.mem+old", b"old").unwrap();
        let open = memory
            .open_for(&user(1), &name("/a.mem+old"), OpenMode::Read)
            .unwrap();
        write(&memory, &user(1), "/a.mem+other", b"other").unwrap();
        let later = Instant::now() + Duration::from_secs(11);
        // One is open: only the other goes.
        assert_eq!(memory.sweep(later), 1);
        assert_eq!(memory.buffers(), 1);
        drop(open);
        assert_eq!(memory.sweep(later), 1);
        assert_eq!(memory.buffers(), 0);
        assert_eq!(memory.bytes(), 0);
        // Not yet idle: kept.
        write(&memory, &user(1), "/a.mem+new", b"new").unwrap();
        assert_eq!(memory.sweep(Instant::now()), 0);
    }
}
