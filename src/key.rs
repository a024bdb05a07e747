//! The network key: a private network's shared secret, and the sealing of tracker datagrams
//! under it.
//!
//! A [`NetworkKey`] is 32 random bytes, kept in a file only its owner can read
//! ([`NetworkKey::create`] writes one with mode 0600). A tracker and nodes started with the
//! same key form a private network:
//!
//! - every tracker datagram is sealed with AES-256-GCM (`DatagramSeal`) under a key used
//!   for that one datagram, derived from the network key and a 24-byte salt unique to it
//!   (a keyed BLAKE3 hash of a counter under a random seed drawn on the first seal), so
//!   no (key, nonce) pair repeats however many datagrams are sent;
//! - every sealed request carries the time it was sent, and the tracker refuses one it has
//!   seen before or that is more than [`REPLAY_WINDOW`] old (`ReplayGuard`);
//! - every peer connection runs a Noise handshake on a key derived from the network key
//!   (see `session`).
//!
//! Keys for each use are derived with BLAKE3's key derivation under distinct contexts, so
//! no two uses share key material. The sealed envelope wraps the datagrams `messages`
//! encodes, so its salt and time bytes are laid out here, not there.
//!
//! ```
//! use p2ptorrent::{NetworkKey, NodeConfig, TrackerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let made = NetworkKey::create(&dir.path().join("net.key"))?; // once, by the operator
//! let key = NetworkKey::load(&dir.path().join("net.key"))?;   // by every member
//! assert_eq!(made.fingerprint(), key.fingerprint());
//! let tracker = TrackerConfig::new("127.0.0.1:0".parse()?).key(key.clone());
//! let node = NodeConfig::new("A", "files/A").key(key);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::{Error, Result};
use crate::messages::MAX_DATAGRAM_LEN;
pub(crate) use replay::{Replay, ReplayGuard};

mod replay;

/// The length of a network key, in bytes.
pub const KEY_LEN: usize = 32;
/// The first bytes of every sealed tracker datagram. A plain datagram starts with the
/// protocol version instead, so the two are never confused.
pub const SEALED_MAGIC: [u8; 4] = *b"P2PS";
/// How far a sealed request's send time may be from the tracker's clock, either way.
/// Hosts of one network must keep their clocks within this of each other.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

const SALT_LEN: usize = 24;
const TAG_LEN: usize = 16;
const TIME_LEN: usize = 8;
/// Bytes a sealed datagram carries before its body: the magic, the salt and the send time.
pub(crate) const SEAL_HEAD: usize = SEALED_MAGIC.len() + SALT_LEN + TIME_LEN;
/// Bytes a sealed datagram adds to its body.
pub const SEAL_OVERHEAD: usize = SEALED_MAGIC.len() + SALT_LEN + TIME_LEN + TAG_LEN;

/// A private network's shared secret.
///
/// Its `Debug` form shows only a fingerprint, never the key.
#[derive(Clone)]
pub struct NetworkKey {
    bytes: [u8; KEY_LEN],
}

impl NetworkKey {
    /// Makes a new key from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random source fails.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self { bytes })
    }

    /// Uses `bytes` as the key. They must be secret and uniformly random.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self { bytes }
    }

    /// Makes a new key and writes it to `path`, which must not exist, readable and
    /// writable by its owner only (mode 0600).
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file exists or cannot be written, [`Error::Random`] if the
    /// random source fails.
    pub fn create(path: &Path) -> Result<Self> {
        let key = Self::generate()?;
        let file_err = |op| {
            move |source| Error::File {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(file_err("creating key file"))?;
        file.write_all(&key.bytes)
            .and_then(|()| file.sync_all())
            .map_err(file_err("writing key file"))?;
        Ok(key)
    }

    /// Reads a key from `path`: exactly [`KEY_LEN`] bytes, in a file no one but its owner
    /// can read or write.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be read, [`Error::Key`] if it is not a regular
    /// file, has the wrong length or is open to other users.
    pub fn load(path: &Path) -> Result<Self> {
        let file_err = |source| Error::File {
            op: "reading key file",
            path: path.to_path_buf(),
            source,
        };
        let key_err = |reason: String| Error::Key {
            path: path.to_path_buf(),
            reason,
        };
        // Opened without blocking: a FIFO put where the key should be would otherwise
        // hold the tracker or node at start until somebody writes into it. (Reads of a
        // regular file ignore the flag.)
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(file_err)?;
        let meta = file.metadata().map_err(file_err)?;
        if !meta.is_file() {
            return Err(key_err("not a regular file".into()));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(key_err(format!(
                "other users can access it (mode {:o}); run chmod 600 on it",
                mode & 0o777
            )));
        }
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        file.take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(file_err)?;
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            key_err(format!(
                "a key is exactly {KEY_LEN} bytes, this file has {}{}",
                bytes.len().min(KEY_LEN),
                if bytes.len() > KEY_LEN {
                    " or more"
                } else {
                    ""
                }
            ))
        })?;
        Ok(Self { bytes })
    }

    /// A short public name for the key (16 hex digits), to tell keys apart in logs
    /// without revealing them.
    pub fn fingerprint(&self) -> String {
        let id = self.derive("p2ptorrent 2026-11-25 key fingerprint");
        id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Derives the key for one use, named by `context`.
    pub(crate) fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.bytes)
    }

    /// The pre-shared key of the Noise handshake on peer connections.
    pub(crate) fn noise_psk(&self) -> [u8; 32] {
        self.derive("p2ptorrent 2026-11-25 noise psk")
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkKey({})", self.fingerprint())
    }
}

/// Which way a datagram goes; each way has its own key, so a reply can never be replayed
/// to the tracker as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a node to the tracker.
    Request,
    /// From the tracker to a node.
    Reply,
}

/// Seals and opens tracker datagrams under a network key.
///
/// A sealed datagram is [`SEALED_MAGIC`], a 24-byte salt, then AES-256-GCM over the
/// send time (milliseconds since the Unix epoch, 8 bytes big-endian) and the plain
/// datagram, with a 16-byte tag. The AES key is a keyed BLAKE3 hash of the salt under the
/// direction's key, used for this one datagram, with a zero nonce; the magic and salt are
/// authenticated as associated data.
///
/// Salts are a keyed BLAKE3 hash of a counter under a seed drawn from the operating
/// system's random source on the first seal: unique to each datagram and unpredictable like
/// random ones, for one hash instead of a system call per datagram (the tracker answering
/// under a key spent 4.5 % of its time in `getrandom`). Clones share the seed and counter.
///
/// [`TrackerClient`](crate::TrackerClient) and the tracker use it; it is public for tools
/// that speak to a tracker directly, such as load generators.
#[derive(Clone)]
pub struct DatagramSeal {
    request: [u8; 32],
    reply: [u8; 32],
    salts: Arc<OnceLock<Salts>>,
}

/// Where a seal's salts come from: its seed, and how many salts it has given.
struct Salts {
    seed: [u8; 32],
    next: AtomicU64,
}

impl fmt::Debug for DatagramSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatagramSeal { .. }")
    }
}

/// Why a sealed datagram was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// It does not start with [`SEALED_MAGIC`]: a plain datagram.
    Plain,
    /// It is sealed, but not under this key (or was altered).
    Unopenable,
}

impl DatagramSeal {
    /// Derives both directions' keys from the network key.
    pub fn new(key: &NetworkKey) -> Self {
        Self {
            request: key.derive("p2ptorrent 2026-11-25 tracker request"),
            reply: key.derive("p2ptorrent 2026-11-25 tracker reply"),
            salts: Arc::default(),
        }
    }

    /// Fills `salt` with the next salt: the keyed hash of the next count under the seed,
    /// drawn from the random source the first time.
    fn fill_salt(&self, salt: &mut [u8]) -> Result<()> {
        let salts = match self.salts.get() {
            Some(salts) => salts,
            None => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
                // Two threads sealing first at once: one seed wins, the other is dropped.
                self.salts.get_or_init(|| Salts {
                    seed,
                    next: AtomicU64::new(0),
                })
            }
        };
        let count = salts.next.fetch_add(1, Ordering::Relaxed);
        let mut hasher = blake3::Hasher::new_keyed(&salts.seed);
        hasher.update(&count.to_le_bytes());
        hasher.finalize_xof().fill(salt);
        Ok(())
    }

    /// Seals `body`, stamped with the current time.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random source fails.
    pub fn seal(&self, direction: Direction, body: &[u8]) -> Result<Vec<u8>> {
        self.seal_at(direction, body, unix_millis())
    }

    /// Seals `body`, stamped with `sent` (milliseconds since the Unix epoch).
    ///
    /// # Errors
    ///
    /// As [`seal`](Self::seal).
    pub fn seal_at(&self, direction: Direction, body: &[u8], sent: u64) -> Result<Vec<u8>> {
        let mut out = vec![0; SEAL_HEAD + body.len() + TAG_LEN];
        out[SEAL_HEAD..SEAL_HEAD + body.len()].copy_from_slice(body);
        let len = self.seal_in_place(direction, &mut out, body.len(), sent)?;
        out.truncate(len);
        Ok(out)
    }

    /// Seals, where it lies, a body already written at `buf[SEAL_HEAD..SEAL_HEAD + len]`:
    /// the head goes before it and the tag after. Returns the sealed datagram's length,
    /// `len + SEAL_OVERHEAD`. This is how the tracker seals a reply without copying it.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] if `buf` has no room for the tag, [`Error::Random`] if the
    /// random source fails.
    pub(crate) fn seal_in_place(
        &self,
        direction: Direction,
        buf: &mut [u8],
        len: usize,
        sent: u64,
    ) -> Result<usize> {
        let sealed_len = SEAL_HEAD + len + TAG_LEN;
        if buf.len() < sealed_len {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: buf.len().saturating_sub(SEAL_OVERHEAD) as u64,
            });
        }
        let (aad, rest) = buf[..sealed_len].split_at_mut(SEALED_MAGIC.len() + SALT_LEN);
        let (magic, salt) = aad.split_at_mut(SEALED_MAGIC.len());
        magic.copy_from_slice(&SEALED_MAGIC);
        self.fill_salt(salt)?;
        let mut salt_copy = [0u8; SALT_LEN];
        salt_copy.copy_from_slice(salt);
        let (in_out, tag_room) = rest.split_at_mut(TIME_LEN + len);
        in_out[..TIME_LEN].copy_from_slice(&sent.to_be_bytes());
        let tag = self
            .cipher(direction, &salt_copy)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&*aad),
                in_out,
            )
            .map_err(|_| Error::FrameTooLarge {
                len: len as u64,
                max: MAX_DATAGRAM_LEN as u64,
            })?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(sealed_len)
    }

    /// Opens a sealed datagram in place, returning its send time (milliseconds since the
    /// Unix epoch) and the plain datagram inside.
    ///
    /// # Errors
    ///
    /// [`Unsealed::Plain`] if it is not sealed at all, [`Unsealed::Unopenable`] if it is
    /// not sealed under this key and direction, or was altered.
    pub fn open<'a>(
        &self,
        direction: Direction,
        datagram: &'a mut [u8],
    ) -> std::result::Result<(u64, &'a [u8]), Unsealed> {
        if !is_sealed(datagram) {
            return Err(Unsealed::Plain);
        }
        if datagram.len() < SEAL_OVERHEAD {
            return Err(Unsealed::Unopenable);
        }
        let (aad, in_out) = datagram.split_at_mut(SEALED_MAGIC.len() + SALT_LEN);
        let salt: [u8; SALT_LEN] = aad[SEALED_MAGIC.len()..]
            .try_into()
            .map_err(|_| Unsealed::Unopenable)?;
        let plain = self
            .cipher(direction, &salt)
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&*aad),
                in_out,
            )
            .map_err(|_| Unsealed::Unopenable)?;
        let (time, body) = plain.split_at(TIME_LEN);
        let mut sent = [0u8; TIME_LEN];
        sent.copy_from_slice(time);
        Ok((u64::from_be_bytes(sent), body))
    }

    fn cipher(&self, direction: Direction, salt: &[u8; SALT_LEN]) -> LessSafeKey {
        let key = match direction {
            Direction::Request => &self.request,
            Direction::Reply => &self.reply,
        };
        let one_time = blake3::keyed_hash(key, salt);
        // AES-256 takes any 32 bytes; this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, one_time.as_bytes())
            .unwrap_or_else(|_| unreachable!("AES-256 keys are 32 bytes"));
        LessSafeKey::new(unbound)
    }
}

/// Returns the first 16 bytes of a sealed datagram's salt: what the replay guard
/// remembers it by.
pub(crate) fn salt_id(datagram: &[u8]) -> Option<[u8; 16]> {
    let start = SEALED_MAGIC.len();
    datagram.get(start..start + 16)?.try_into().ok()
}

/// Returns whether a datagram is sealed (starts with [`SEALED_MAGIC`]).
pub(crate) fn is_sealed(datagram: &[u8]) -> bool {
    datagram.starts_with(&SEALED_MAGIC)
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> NetworkKey {
        NetworkKey::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn sealed_datagrams_open_only_under_their_key_and_direction() {
        let seal = DatagramSeal::new(&key(1));
        let mut sealed = seal.seal(Direction::Request, b"have file").unwrap();
        assert_eq!(sealed.len(), 9 + SEAL_OVERHEAD);
        assert!(!sealed.windows(9).any(|w| w == b"have file"));

        let other = DatagramSeal::new(&key(2));
        assert_eq!(
            other.open(Direction::Request, &mut sealed.clone()),
            Err(Unsealed::Unopenable)
        );
        assert_eq!(
            seal.open(Direction::Reply, &mut sealed.clone()),
            Err(Unsealed::Unopenable)
        );
        let (sent, body) = seal.open(Direction::Request, &mut sealed).unwrap();
        assert_eq!(body, b"have file");
        assert!(sent.abs_diff(unix_millis()) < 60_000);
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let seal = DatagramSeal::new(&key(1));
        let sealed = seal.seal(Direction::Reply, b"owners").unwrap();
        for i in SEALED_MAGIC.len()..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert_eq!(
                seal.open(Direction::Reply, &mut altered),
                Err(Unsealed::Unopenable),
                "byte {i}"
            );
        }
        let mut short = sealed[..SEAL_OVERHEAD - 1].to_vec();
        assert_eq!(
            seal.open(Direction::Reply, &mut short),
            Err(Unsealed::Unopenable)
        );
        assert_eq!(
            seal.open(Direction::Reply, &mut b"plain".to_vec()),
            Err(Unsealed::Plain)
        );
    }

    #[test]
    fn salts_differ_between_seals_of_the_same_body() {
        let seal = DatagramSeal::new(&key(1));
        let a = seal.seal(Direction::Request, b"x").unwrap();
        let b = seal.seal(Direction::Request, b"x").unwrap();
        assert_ne!(a[4..28], b[4..28]);
        // A clone goes on counting from the same seed; another seal under the same key
        // (another process, say) starts from a seed of its own.
        let c = seal.clone().seal(Direction::Request, b"x").unwrap();
        let other = DatagramSeal::new(&key(1))
            .seal(Direction::Request, b"x")
            .unwrap();
        let salts: std::collections::HashSet<&[u8]> =
            [&a, &b, &c, &other].iter().map(|d| &d[4..28]).collect();
        assert_eq!(salts.len(), 4, "every salt differs");
    }

    #[test]
    fn every_sealed_length_from_0_to_255_is_refused_without_panic() {
        let seal = DatagramSeal::new(&key(1));
        let guard = ReplayGuard::new();
        let mut rng = fastrand::Rng::with_seed(11);
        for len in 0..=255usize {
            for _ in 0..32 {
                let mut datagram = SEALED_MAGIC.to_vec();
                datagram.extend((0..len).map(|_| rng.u8(..)));
                for direction in [Direction::Request, Direction::Reply] {
                    assert!(seal.open(direction, &mut datagram.clone()).is_err());
                }
                if let Some(id) = salt_id(&datagram) {
                    // The guard takes any salt; only opened datagrams ever reach it.
                    let _ = guard.admit(id, unix_millis(), unix_millis());
                }
            }
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any bytes, sealed-looking or not: never opened, never a panic.
            #[test]
            fn any_datagram_bytes_fail_to_open(
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
                magic in any::<bool>(),
            ) {
                let mut datagram = if magic { SEALED_MAGIC.to_vec() } else { Vec::new() };
                datagram.extend_from_slice(&bytes);
                let seal = DatagramSeal::new(&key(1));
                prop_assert!(seal.open(Direction::Request, &mut datagram.clone()).is_err());
                prop_assert!(seal.open(Direction::Reply, &mut datagram).is_err());
            }
        }
    }

    #[test]
    fn key_files_are_private_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.key");
        let made = NetworkKey::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let loaded = NetworkKey::load(&path).unwrap();
        assert_eq!(made.bytes, loaded.bytes);
        assert_eq!(made.fingerprint(), loaded.fingerprint());
        assert!(!format!("{made:?}").contains(&format!("{:02x}", made.bytes[0]).repeat(2)));

        // Never overwrites.
        assert!(matches!(NetworkKey::create(&path), Err(Error::File { .. })));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NetworkKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let short = dir.path().join("short.key");
        std::fs::write(&short, [0u8; 31]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = NetworkKey::load(&short).unwrap_err();
        assert!(err.to_string().contains("has 31"), "{err}");
    }

    /// A FIFO where the key should be is refused at once, not waited on for a writer.
    #[test]
    fn a_fifo_as_the_key_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("net.key");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let path = fifo.clone();
        let loader = std::thread::spawn(move || {
            let _ = tx.send(NetworkKey::load(&path).map(|_| ()));
        });
        let result = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("loading a FIFO as the key waited for a writer");
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Key { ref reason, .. } if reason.contains("not a regular file")),
            "{err}"
        );
        loader.join().unwrap();
    }
}
