//! Applications, developer keys and rooms (design.md "Access control"; seed 001).
//!
//! Owns: the registry of applications (id, developer keys sealed under a master secret,
//! default room policy) and their rooms (keyed by `(app, room)`: room "blue" of app A is not
//! room "blue" of app B; created on first join), its JSON state-file form and atomic save.
//! May not touch: the HTTP API, the audit log, tokens' wire format (see `token`), the clock
//! (times are passed in). The daemon decides when to persist.
//!
//! Developer keys are stored encrypted at rest with AES-256-GCM under a 32-byte master secret
//! read from a file or a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`), and decrypted
//! only when a token is verified.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use serde::{Deserialize, Serialize};

use super::token::{DevKey, RoomPolicy};

/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;
/// Rooms one application may hold (rooms are created by any valid token holder).
pub const MAX_ROOMS_PER_APP: usize = 10_000;
/// Developer keys one application may hold (rotation needs two; a few more for staging).
pub const MAX_KEYS_PER_APP: usize = 8;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid {what} {name:?}: 1 to 64 characters of [A-Za-z0-9._-]")]
    BadName { what: &'static str, name: String },
    #[error("application {0:?} already exists")]
    AppExists(String),
    #[error("no application {0:?}")]
    NoSuchApp(String),
    #[error("application {app:?} already has a key {kid:?}")]
    KeyExists { app: String, kid: String },
    #[error("application {app:?} has no key {kid:?}")]
    NoSuchKey { app: String, kid: String },
    #[error("application {0:?} has too many developer keys")]
    TooManyKeys(String),
    #[error("application {0:?} has too many rooms")]
    TooManyRooms(String),
    #[error("no room {room:?} in application {app:?}")]
    NoSuchRoom { app: String, room: String },
    #[error("developer key could not be decrypted (wrong master secret or tampered state)")]
    Unseal,
    #[error("stored developer key is invalid: {0}")]
    BadStoredKey(String),
    #[error("master secret: {0}")]
    MasterSecret(String),
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error("crypto failure: {0}")]
    Crypto(String),
}

/// Why a registry state file does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryParseError {
    #[error("{0}")]
    Json(String),
    #[error("state version {0} (this build reads {STATE_VERSION})")]
    Version(u32),
    #[error("invalid application id {0:?}")]
    AppId(String),
    #[error("invalid key id {kid:?} in {app:?}")]
    KeyId { app: String, kid: String },
    #[error("invalid room name {room:?} in {app:?}")]
    Room { app: String, room: String },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn check_name(what: &'static str, s: &str) -> Result<(), AppError> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(AppError::BadName {
            what,
            name: s.to_owned(),
        })
    }
}

/// The 32-byte master secret that seals developer keys at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret([u8; 32]);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(<secret>)")
    }
}

impl Drop for MasterSecret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl MasterSecret {
    pub fn from_bytes(b: &[u8]) -> Result<MasterSecret, AppError> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| AppError::MasterSecret(format!("needs 32 bytes, got {}", b.len())))?;
        Ok(MasterSecret(a))
    }

    /// A fresh random secret (for `sluicectl` to write at install time).
    pub fn generate() -> Result<MasterSecret, AppError> {
        let mut a = [0u8; 32];
        openssl::rand::rand_bytes(&mut a).map_err(|e| AppError::Crypto(e.to_string()))?;
        Ok(MasterSecret(a))
    }

    /// Base64 text form, as written to a secret file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parse file contents: exactly 32 raw bytes, or (surrounding whitespace ignored)
    /// 64 hex digits or standard base64 of 32 bytes.
    pub fn parse(contents: &[u8]) -> Result<MasterSecret, AppError> {
        if contents.len() == 32 {
            return MasterSecret::from_bytes(contents);
        }
        let text = std::str::from_utf8(contents)
            .map_err(|_| AppError::MasterSecret("neither 32 raw bytes nor text".into()))?
            .trim();
        if text.len() == 64 {
            if let Some(mut v) = crate::secrets::unhex(text) {
                let r = MasterSecret::from_bytes(&v);
                v.fill(0);
                std::hint::black_box(&v);
                return r;
            }
        }
        let b = STANDARD
            .decode(text)
            .map_err(|_| AppError::MasterSecret("not 32 bytes, hex or base64".into()))?;
        MasterSecret::from_bytes(&b)
    }

    /// Read a secret file. It must not be readable by group or others.
    pub fn load(path: &Path) -> Result<MasterSecret, AppError> {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |m: String| AppError::MasterSecret(format!("{}: {m}", path.display()));
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err("readable by group or others; chmod 0600 or 0400".into()));
        }
        let bytes = fs::read(path).map_err(|e| err(e.to_string()))?;
        MasterSecret::parse(&bytes).map_err(|e| err(e.to_string()))
    }

    /// Find the secret: an explicit file wins; otherwise the systemd credential `name` under
    /// `credentials_directory` (the value of `$CREDENTIALS_DIRECTORY`, passed in by the caller;
    /// see systemd.exec `LoadCredential=`/`LoadCredentialEncrypted=`).
    pub fn locate(
        explicit: Option<&Path>,
        credentials_directory: Option<&Path>,
        name: &str,
    ) -> Result<MasterSecret, AppError> {
        if let Some(p) = explicit {
            return MasterSecret::load(p);
        }
        match credentials_directory {
            Some(dir) => MasterSecret::load(&dir.join(name)),
            None => Err(AppError::MasterSecret(
                "no master secret file configured and $CREDENTIALS_DIRECTORY is not set".into(),
            )),
        }
    }

    /// AES-256-GCM: random 96-bit nonce ‖ ciphertext ‖ 128-bit tag, `aad` authenticated.
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AppError> {
        let crypto = |e: openssl::error::ErrorStack| AppError::Crypto(e.to_string());
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(crypto)?;
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )
        .map_err(crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AppError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(AppError::Unseal);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        decrypt_aead(Cipher::aes_256_gcm(), &self.0, Some(nonce), aad, ct, tag)
            .map_err(|_| AppError::Unseal)
    }
}

/// Binds a sealed key to its application and key id, so ciphertexts cannot be swapped.
fn key_aad(app: &str, kid: &str) -> Vec<u8> {
    format!("sluice-devkey-v1\0{app}\0{kid}").into_bytes()
}

/// A developer key as stored: sealed secret, never the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub created_unix: u64,
    /// base64(nonce ‖ AES-256-GCM ciphertext ‖ tag).
    pub sealed: String,
}

/// A room of one application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    pub created_unix: u64,
    /// Overrides the application's default policy when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RoomPolicy>,
}

/// One application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub created_unix: u64,
    #[serde(default)]
    pub keys: Vec<StoredKey>,
    #[serde(default)]
    pub default_policy: RoomPolicy,
    #[serde(default)]
    pub rooms: BTreeMap<String, Room>,
}

impl App {
    /// The policy in force for `room` (its own, else the application's default).
    pub fn policy_for(&self, room: &str) -> &RoomPolicy {
        self.rooms
            .get(room)
            .and_then(|r| r.policy.as_ref())
            .unwrap_or(&self.default_policy)
    }
}

/// All applications; the JSON state file is this struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub version: u32,
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            version: STATE_VERSION,
            apps: BTreeMap::new(),
        }
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    fn app_mut(&mut self, id: &str) -> Result<&mut App, AppError> {
        self.apps
            .get_mut(id)
            .ok_or_else(|| AppError::NoSuchApp(id.to_owned()))
    }

    pub fn add_app(&mut self, id: &str, now_unix: u64) -> Result<(), AppError> {
        check_name("application id", id)?;
        if self.apps.contains_key(id) {
            return Err(AppError::AppExists(id.to_owned()));
        }
        self.apps.insert(
            id.to_owned(),
            App {
                created_unix: now_unix,
                keys: Vec::new(),
                default_policy: RoomPolicy::default(),
                rooms: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Remove an application with its keys and rooms.
    pub fn remove_app(&mut self, id: &str) -> Result<App, AppError> {
        self.apps
            .remove(id)
            .ok_or_else(|| AppError::NoSuchApp(id.to_owned()))
    }

    /// Store `key` for `app`, sealed under `master`.
    pub fn add_key(
        &mut self,
        app: &str,
        key: &DevKey,
        master: &MasterSecret,
        now_unix: u64,
    ) -> Result<(), AppError> {
        let a = self.app_mut(app)?;
        if a.keys.iter().any(|k| k.kid == key.kid()) {
            return Err(AppError::KeyExists {
                app: app.to_owned(),
                kid: key.kid().to_owned(),
            });
        }
        if a.keys.len() >= MAX_KEYS_PER_APP {
            return Err(AppError::TooManyKeys(app.to_owned()));
        }
        let sealed = master.seal(key.secret(), &key_aad(app, key.kid()))?;
        a.keys.push(StoredKey {
            kid: key.kid().to_owned(),
            created_unix: now_unix,
            sealed: STANDARD.encode(sealed),
        });
        Ok(())
    }

    /// Generate, store and return a new random developer key (shown once to the operator).
    pub fn generate_key(
        &mut self,
        app: &str,
        kid: &str,
        master: &MasterSecret,
        now_unix: u64,
    ) -> Result<DevKey, AppError> {
        let key = DevKey::generate(kid).map_err(|e| AppError::BadStoredKey(e.to_string()))?;
        self.add_key(app, &key, master, now_unix)?;
        Ok(key)
    }

    pub fn remove_key(&mut self, app: &str, kid: &str) -> Result<(), AppError> {
        let a = self.app_mut(app)?;
        let before = a.keys.len();
        a.keys.retain(|k| k.kid != kid);
        if a.keys.len() == before {
            return Err(AppError::NoSuchKey {
                app: app.to_owned(),
                kid: kid.to_owned(),
            });
        }
        Ok(())
    }

    /// Decrypt the developer key `kid` of `app`; with no `kid`, the application's only key
    /// (ambiguous when it has several). Use as the `key_lookup` of `token::verify`.
    pub fn dev_key(
        &self,
        app: &str,
        kid: Option<&str>,
        master: &MasterSecret,
    ) -> Result<Option<DevKey>, AppError> {
        let Some(a) = self.apps.get(app) else {
            return Ok(None);
        };
        let stored = match kid {
            Some(kid) => a.keys.iter().find(|k| k.kid == kid),
            None if a.keys.len() == 1 => a.keys.first(),
            None => None,
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        let sealed = STANDARD
            .decode(&stored.sealed)
            .map_err(|_| AppError::Unseal)?;
        let mut secret = master.open(&sealed, &key_aad(app, &stored.kid))?;
        let key = DevKey::new(&stored.kid, &secret);
        secret.fill(0);
        key.map(Some)
            .map_err(|e| AppError::BadStoredKey(e.to_string()))
    }

    /// Re-seal every developer key under a new master secret (master-secret rotation).
    /// Nothing changes unless every key opens with `old`.
    pub fn reseal(&mut self, old: &MasterSecret, new: &MasterSecret) -> Result<(), AppError> {
        let mut resealed = Vec::new();
        for (app_id, app) in &self.apps {
            for k in &app.keys {
                let aad = key_aad(app_id, &k.kid);
                let sealed = STANDARD.decode(&k.sealed).map_err(|_| AppError::Unseal)?;
                let mut plain = old.open(&sealed, &aad)?;
                let again = new.seal(&plain, &aad);
                plain.fill(0);
                resealed.push(STANDARD.encode(again?));
            }
        }
        let mut it = resealed.into_iter();
        for app in self.apps.values_mut() {
            for k in &mut app.keys {
                // One entry was pushed per key in the same iteration order (BTreeMap, Vec).
                k.sealed = it.next().expect("one resealed entry per key");
            }
        }
        Ok(())
    }

    /// The room `(app, room)`, created with the application's default policy on first join.
    pub fn join_room(&mut self, app: &str, room: &str, now_unix: u64) -> Result<&Room, AppError> {
        check_name("room name", room)?;
        let a = self.app_mut(app)?;
        if !a.rooms.contains_key(room) && a.rooms.len() >= MAX_ROOMS_PER_APP {
            return Err(AppError::TooManyRooms(app.to_owned()));
        }
        Ok(a.rooms.entry(room.to_owned()).or_insert(Room {
            created_unix: now_unix,
            policy: None,
        }))
    }

    pub fn room(&self, app: &str, room: &str) -> Option<&Room> {
        self.apps.get(app)?.rooms.get(room)
    }

    /// The policy for `(app, room)`, whether or not the room exists yet.
    pub fn policy(&self, app: &str, room: &str) -> Option<&RoomPolicy> {
        Some(self.apps.get(app)?.policy_for(room))
    }

    pub fn set_default_policy(&mut self, app: &str, policy: RoomPolicy) -> Result<(), AppError> {
        self.app_mut(app)?.default_policy = policy;
        Ok(())
    }

    /// Give a room its own policy (`None`: back to the application default). Creates the room.
    pub fn set_room_policy(
        &mut self,
        app: &str,
        room: &str,
        policy: Option<RoomPolicy>,
        now_unix: u64,
    ) -> Result<(), AppError> {
        self.join_room(app, room, now_unix)?;
        let a = self.app_mut(app)?;
        if let Some(r) = a.rooms.get_mut(room) {
            r.policy = policy;
        }
        Ok(())
    }

    pub fn remove_room(&mut self, app: &str, room: &str) -> Result<Room, AppError> {
        self.app_mut(app)?
            .rooms
            .remove(room)
            .ok_or_else(|| AppError::NoSuchRoom {
                app: app.to_owned(),
                room: room.to_owned(),
            })
    }

    pub fn to_json(&self) -> String {
        // Plain structs with string map keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("registry serialises")
    }

    /// Parse a state file's contents, validating names.
    pub fn from_json(s: &str) -> Result<Registry, RegistryParseError> {
        let r: Registry =
            serde_json::from_str(s).map_err(|e| RegistryParseError::Json(e.to_string()))?;
        if r.version != STATE_VERSION {
            return Err(RegistryParseError::Version(r.version));
        }
        for (id, app) in &r.apps {
            if !valid_name(id) {
                return Err(RegistryParseError::AppId(id.clone()));
            }
            if let Some(k) = app.keys.iter().find(|k| !valid_name(&k.kid)) {
                return Err(RegistryParseError::KeyId {
                    app: id.clone(),
                    kid: k.kid.clone(),
                });
            }
            if let Some(room) = app.rooms.keys().find(|r| !valid_name(r)) {
                return Err(RegistryParseError::Room {
                    app: id.clone(),
                    room: room.clone(),
                });
            }
        }
        Ok(r)
    }

    /// Load the state file; a missing file is an empty registry.
    pub fn load(path: &Path) -> Result<Registry, AppError> {
        match fs::read_to_string(path) {
            Ok(s) => Registry::from_json(&s).map_err(|e| AppError::State {
                path: path.to_owned(),
                msg: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::new()),
            Err(e) => Err(AppError::State {
                path: path.to_owned(),
                msg: e.to_string(),
            }),
        }
    }

    /// Write the state file atomically: a temporary file (mode 0600) in the same directory,
    /// fsync, rename over the old file, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), AppError> {
        crate::files::write_private_atomic(path, self.to_json().as_bytes()).map_err(|e| {
            AppError::State {
                path: path.to_owned(),
                msg: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::token::{self, Claims, Intent, Limits, Role, Target, TokenError};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-apps-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn master() -> MasterSecret {
        MasterSecret::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn rooms_are_per_application() {
        let mut r = Registry::new();
        r.add_app("A", 1).unwrap();
        r.add_app("B", 1).unwrap();
        assert!(matches!(r.add_app("A", 2), Err(AppError::AppExists(_))));
        assert!(r.room("A", "blue").is_none());
        r.join_room("A", "blue", 10).unwrap();
        assert!(r.room("A", "blue").is_some());
        assert!(r.room("B", "blue").is_none(), "blue of A is not blue of B");
        let policy = RoomPolicy {
            allowed_email_domains: vec!["a.example".into()],
            ..RoomPolicy::default()
        };
        r.set_room_policy("A", "blue", Some(policy.clone()), 11)
            .unwrap();
        r.join_room("B", "blue", 12).unwrap();
        assert_eq!(r.policy("A", "blue"), Some(&policy));
        assert_eq!(r.policy("B", "blue"), Some(&RoomPolicy::default()));
        // Joining again keeps the room as it was.
        assert_eq!(r.join_room("A", "blue", 99).unwrap().created_unix, 10);
        assert!(matches!(
            r.join_room("C", "blue", 1),
            Err(AppError::NoSuchApp(_))
        ));
        assert!(matches!(
            r.join_room("A", "../etc", 1),
            Err(AppError::BadName { .. })
        ));
        r.remove_room("A", "blue").unwrap();
        assert!(r.room("A", "blue").is_none());
        assert!(r.room("B", "blue").is_some());
    }

    #[test]
    fn keys_sealed_at_rest_and_usable_for_tokens() {
        let m = master();
        let mut r = Registry::new();
        r.add_app("A", 1).unwrap();
        let key = r.generate_key("A", "k1", &m, 2).unwrap();
        let json = r.to_json();
        // The plaintext secret appears nowhere in the state, in any common encoding.
        assert!(!json.contains(&STANDARD.encode(key.secret())));
        let hexs: String = key.secret().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!json.contains(&hexs));
        let r2 = Registry::from_json(&json).unwrap();
        assert_eq!(r2, r);
        assert_eq!(r2.dev_key("A", Some("k1"), &m).unwrap(), Some(key.clone()));
        assert_eq!(r2.dev_key("A", None, &m).unwrap(), Some(key.clone()));
        assert_eq!(r2.dev_key("A", Some("k2"), &m).unwrap(), None);
        assert_eq!(r2.dev_key("B", Some("k1"), &m).unwrap(), None);

        // A token signed by the back end with that key verifies through the registry.
        let claims = Claims {
            sub: "u".into(),
            app: "A".into(),
            room: "blue".into(),
            role: Role::Speaker,
            exp: 1_000_600,
            nbf: 1_000_000,
            iat: 1_000_000,
            email: None,
        };
        let t = token::mint(&key, &claims);
        let lookup = |app: &str, kid: Option<&str>| r2.dev_key(app, kid, &m).ok().flatten();
        let target = Target {
            app: "A",
            room: "blue",
            intent: Intent::Publish,
        };
        let policy = r2.policy("A", "blue").unwrap();
        assert_eq!(
            token::verify(&t, lookup, 1_000_100, &target, policy, &Limits::default()),
            Ok(claims)
        );

        // Wrong master secret: refused, not garbage.
        let wrong = MasterSecret::from_bytes(&[8u8; 32]).unwrap();
        assert!(matches!(
            r2.dev_key("A", Some("k1"), &wrong),
            Err(AppError::Unseal)
        ));
        let lookup_wrong =
            |app: &str, kid: Option<&str>| r2.dev_key(app, kid, &wrong).ok().flatten();
        assert_eq!(
            token::verify(
                &t,
                lookup_wrong,
                1_000_100,
                &target,
                policy,
                &Limits::default()
            ),
            Err(TokenError::UnknownKey)
        );

        // A sealed key moved to another application does not open (AAD binds it).
        let mut moved = r2.clone();
        moved.add_app("B", 3).unwrap();
        let stolen = moved.apps["A"].keys[0].clone();
        moved.apps.get_mut("B").unwrap().keys.push(stolen);
        assert!(matches!(
            moved.dev_key("B", Some("k1"), &m),
            Err(AppError::Unseal)
        ));
    }

    #[test]
    fn key_management() {
        let m = master();
        let mut r = Registry::new();
        r.add_app("A", 1).unwrap();
        let k1 = r.generate_key("A", "k1", &m, 1).unwrap();
        assert!(matches!(
            r.add_key("A", &k1, &m, 1),
            Err(AppError::KeyExists { .. })
        ));
        r.generate_key("A", "k2", &m, 1).unwrap();
        // Two keys: no implicit choice.
        assert_eq!(r.dev_key("A", None, &m).unwrap(), None);
        r.remove_key("A", "k1").unwrap();
        assert!(matches!(
            r.remove_key("A", "k1"),
            Err(AppError::NoSuchKey { .. })
        ));
        for i in 0..MAX_KEYS_PER_APP - 1 {
            r.generate_key("A", &format!("x{i}"), &m, 1).unwrap();
        }
        assert!(matches!(
            r.generate_key("A", "one-too-many", &m, 1),
            Err(AppError::TooManyKeys(_))
        ));

        // Master rotation.
        let new = MasterSecret::generate().unwrap();
        let before = r.dev_key("A", Some("k2"), &m).unwrap();
        r.reseal(&m, &new).unwrap();
        assert_eq!(r.dev_key("A", Some("k2"), &new).unwrap(), before);
        assert!(r.dev_key("A", Some("k2"), &m).is_err());
        let snapshot = r.clone();
        assert!(matches!(r.reseal(&m, &new), Err(AppError::Unseal)));
        assert_eq!(r, snapshot, "a failed reseal changes nothing");
    }

    #[test]
    fn master_secret_sources() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tmpdir("master");
        let s = MasterSecret::generate().unwrap();
        let f = d.join("master.key");
        fs::write(&f, format!("{}\n", s.to_base64())).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterSecret::load(&f),
            Err(AppError::MasterSecret(_))
        ));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(MasterSecret::load(&f).unwrap(), s);
        // systemd credential directory.
        let creds = d.join("creds");
        fs::create_dir_all(&creds).unwrap();
        let hex: String = [9u8; 32].iter().map(|b| format!("{b:02x}")).collect();
        fs::write(creds.join("sluice-master"), hex).unwrap();
        fs::set_permissions(
            creds.join("sluice-master"),
            fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        assert_eq!(
            MasterSecret::locate(None, Some(&creds), "sluice-master").unwrap(),
            MasterSecret::from_bytes(&[9u8; 32]).unwrap()
        );
        assert_eq!(
            MasterSecret::locate(Some(&f), Some(&creds), "sluice-master").unwrap(),
            s
        );
        assert!(MasterSecret::locate(None, None, "x").is_err());
        assert_eq!(
            MasterSecret::parse(&[3u8; 32]).unwrap(),
            MasterSecret::from_bytes(&[3u8; 32]).unwrap()
        );
        assert!(MasterSecret::parse(b"short").is_err());
        assert!(MasterSecret::parse(&[0xff; 31]).is_err());
        assert!(!format!("{s:?}").contains(&s.to_base64()));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn atomic_save_and_load() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tmpdir("state");
        let path = d.join("webrtc-state.json");
        assert_eq!(Registry::load(&path).unwrap(), Registry::new());
        let m = master();
        let mut r = Registry::new();
        r.add_app("demo", 5).unwrap();
        r.generate_key("demo", "k1", &m, 5).unwrap();
        r.join_room("demo", "lobby", 6).unwrap();
        r.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Registry::load(&path).unwrap(), r);
        r.join_room("demo", "second", 7).unwrap();
        r.save(&path).unwrap();
        assert_eq!(Registry::load(&path).unwrap(), r);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Corrupt or foreign state is an error naming the file.
        fs::write(
            &path,
            "{\"version\": 1, \"apps\": {\"bad name\": {\"created_unix\": 0}}}",
        )
        .unwrap();
        let e = Registry::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("webrtc-state.json") && e.contains("bad name"),
            "{e}"
        );
        fs::write(&path, "{\"version\": 2}").unwrap();
        assert!(Registry::load(&path).is_err());
        fs::write(&path, "not json").unwrap();
        assert!(Registry::load(&path).is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
