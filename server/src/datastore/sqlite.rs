//! The embedded SQLite datastore.
//!
//! One connection guarded by a mutex; every call runs on tokio's blocking pool. The database runs with
//! `journal_mode=WAL` and `synchronous=FULL`, so a write is on disk (WAL fsynced) before it is acknowledged,
//! with `foreign_keys=ON`, and with `temp_store=MEMORY` (no temporary files: see `open_connection`). The
//! schema is versioned by `PRAGMA user_version`: the numbered migrations in `migrations/` that the file
//! lacks are applied in one transaction at open. The file is created mode 0600.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter,
};
use sha2::{Digest, Sha256};
use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use super::{AttestedAgent, Datastore, DatastoreError, EntryFilter, JoinTokenOutcome, Page, Result, SelectorMatch};
use crate::federation::{BundleEndpointProfile, FederationRelationship};

/// Schema migrations; migration `i` (0-based) brings the schema to version `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_federation_relationships.sql"),
    include_str!("migrations/0003_agent_new_cert.sql"),
    include_str!("migrations/0004_entry_store_svid.sql"),
];

/// The schema version this build writes (`PRAGMA user_version` after open).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for a lock held by another connection (e.g. an operator's `sqlite3` shell).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

use sigil_core::entry::MAX_ENTRY_ID_LEN;

const ENTRY_COLUMNS: &str = "e.id, e.spiffe_id, e.parent_id, e.selectors, e.x509_svid_ttl, e.jwt_svid_ttl, \
     e.dns_names, e.federates_with, e.admin, e.downstream, e.hint, e.entry_expiry, e.revision, e.created_at, e.store_svid";

const AGENT_COLUMNS: &str = "spiffe_id, attestation_type, cert_serial, cert_expires_at, selectors, banned, created_at, \
     updated_at, new_cert_serial, new_cert_expires_at";

/// The SQLite datastore. Cheap to share behind an `Arc`.
pub struct SqliteDatastore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDatastore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl From<rusqlite::Error> for DatastoreError {
    fn from(e: rusqlite::Error) -> Self {
        DatastoreError::Backend(format!("sqlite: {e}"))
    }
}

impl SqliteDatastore {
    /// Opens the database file at `path`, creating it (mode 0600, parent directories 0700) when missing,
    /// and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let owned = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open_connection(&owned))
            .await
            .map_err(|e| DatastoreError::Backend(format!("datastore open task failed: {e}")))??;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file (`PRAGMA user_version`).
    pub async fn schema_version(&self) -> Result<i64> {
        self.run(|conn| Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)).await
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock dropped any open transaction, which rolled it back: the
            // connection is still consistent.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| DatastoreError::Backend(format!("datastore task failed: {e}")))?
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let io = |what: &str, e: std::io::Error| DatastoreError::Backend(format!("{what} {}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io("cannot create the directory of", e))?;
    }
    // Create the file ourselves so it is never readable by others, not even for a moment. SQLite gives the
    // -wal and -shm files the mode of the database file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("cannot open", e))?;
    let mode = file.metadata().map_err(|e| io("cannot stat", e))?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600)).map_err(|e| io("cannot chmod 0600", e))?;
    }
    drop(file);

    let mut conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let journal: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(DatastoreError::Backend(format!(
            "{}: could not enable WAL journal mode (got {journal})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals (one per savepoint) and temporary tables stay in memory. On disk they would go to a
    // temporary directory, and a server with a read-only root filesystem has none writable: SQLite then
    // fails the statement with an I/O error and rolls the whole transaction back.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Page cache up to 16 MiB (SQLite's default is 2 MiB). Entry IDs are hashes, so a batch of creates touches
    // index pages all over the file: with 50,000+ entries the default cache missed on most of them, spilled
    // a batch's dirty pages to the WAL mid-transaction and made each batch slower as the store grew (issue
    // 19's operator cold start). 16 MiB holds those index pages: at 50,000 pods the operator's cold start
    // was 11.1 s (64 MiB: 14.2 s, under more load), with server RSS 153 MiB (64 MiB: 195 MiB). Pages are only
    // cached once read, so a small store uses little of it.
    conn.pragma_update(None, "cache_size", -16_384)?;
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    let foreign_keys: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    let temp_store: i64 = conn.pragma_query_value(None, "temp_store", |r| r.get(0))?;
    if synchronous != 2 || foreign_keys != 1 || temp_store != 2 {
        return Err(DatastoreError::Backend(format!(
            "{}: pragmas not applied (synchronous={synchronous}, foreign_keys={foreign_keys}, temp_store={temp_store})",
            path.display()
        )));
    }
    migrate(&mut conn)?;
    Ok(conn)
}

/// Applies every migration the file lacks, all in one transaction with the new `user_version`.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let Ok(applied) = usize::try_from(current) else {
        return Err(DatastoreError::Backend(format!("database has a negative schema version {current}")));
    };
    if applied > MIGRATIONS.len() {
        return Err(DatastoreError::Backend(format!(
            "database schema version {current} is newer than this server supports ({SCHEMA_VERSION}); \
             refusing to open it"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn corrupt(what: impl fmt::Display, detail: impl fmt::Display) -> DatastoreError {
    DatastoreError::Backend(format!("stored {what} is unreadable: {detail}"))
}

/// The SQLite extended result code of a constraint violation, if `e` is one.
fn constraint_code(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => Some(f.extended_code),
        _ => None,
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        constraint_code(e),
        Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| DatastoreError::Backend(format!("cannot encode JSON: {e}")))
}

fn selector_strings(selectors: &[Selector]) -> Vec<String> {
    selectors.iter().map(Selector::to_string).collect()
}

fn parse_selectors(what: &str, json: &str) -> Result<Vec<Selector>> {
    let raw: Vec<String> = serde_json::from_str(json).map_err(|e| corrupt(what, e))?;
    raw.iter().map(|s| Selector::parse(s).map_err(|e| corrupt(what, e))).collect()
}

/// The sorted, deduplicated selector set, as JSON (unambiguous whatever the selector values contain).
fn selector_set_json(selectors: &[Selector]) -> Result<String> {
    let set: BTreeSet<String> = selectors.iter().map(Selector::to_string).collect();
    to_json(&set)
}

/// A digest of the selector set: equal sets give equal keys, whatever the order or repetition.
fn selector_key(selectors: &[Selector]) -> Result<String> {
    Ok(hex::encode(Sha256::digest(selector_set_json(selectors)?.as_bytes())))
}

fn check_entry_id(id: &str) -> Result<()> {
    if id.len() > MAX_ENTRY_ID_LEN {
        return Err(DatastoreError::Invalid(format!("entry id is longer than {MAX_ENTRY_ID_LEN} bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DatastoreError::Invalid(format!(
            "entry id {id:?} may contain only printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

// ----- entries -----

/// An entries row before its text columns are parsed.
struct EntryRow {
    id: String,
    spiffe_id: String,
    parent_id: String,
    selectors: String,
    x509_svid_ttl: i64,
    jwt_svid_ttl: i64,
    dns_names: String,
    federates_with: String,
    admin: bool,
    downstream: bool,
    hint: String,
    entry_expiry: i64,
    revision: i64,
    created_at: i64,
    store_svid: bool,
}

impl EntryRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            spiffe_id: r.get(1)?,
            parent_id: r.get(2)?,
            selectors: r.get(3)?,
            x509_svid_ttl: r.get(4)?,
            jwt_svid_ttl: r.get(5)?,
            dns_names: r.get(6)?,
            federates_with: r.get(7)?,
            admin: r.get(8)?,
            downstream: r.get(9)?,
            hint: r.get(10)?,
            entry_expiry: r.get(11)?,
            revision: r.get(12)?,
            created_at: r.get(13)?,
            store_svid: r.get(14)?,
        })
    }

    fn decode(self) -> Result<RegistrationEntry> {
        let what = format!("entry {}", self.id);
        let id = |s: &str| SpiffeId::new(s).map_err(|e| corrupt(&what, e));
        let ttl = |v: i64| u32::try_from(v).map_err(|e| corrupt(&what, e));
        let dns_names: Vec<String> = serde_json::from_str(&self.dns_names).map_err(|e| corrupt(&what, e))?;
        let federates: Vec<String> = serde_json::from_str(&self.federates_with).map_err(|e| corrupt(&what, e))?;
        let federates_with = federates
            .iter()
            .map(|td| TrustDomain::new(td).map_err(|e| corrupt(&what, e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(RegistrationEntry {
            spiffe_id: id(&self.spiffe_id)?,
            parent_id: id(&self.parent_id)?,
            selectors: parse_selectors(&what, &self.selectors)?,
            x509_svid_ttl: ttl(self.x509_svid_ttl)?,
            jwt_svid_ttl: ttl(self.jwt_svid_ttl)?,
            dns_names,
            federates_with,
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint,
            entry_expiry: self.entry_expiry,
            store_svid: self.store_svid,
            revision: self.revision,
            created_at: self.created_at,
            id: self.id,
        })
    }
}

fn query_entries(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<RegistrationEntry>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), EntryRow::from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?.decode()?);
    }
    Ok(out)
}

fn load_entry(conn: &Connection, id: &str) -> Result<Option<RegistrationEntry>> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries e WHERE e.id = ?1");
    Ok(query_entries(conn, &sql, &[Value::Text(id.to_owned())])?.into_iter().next())
}

/// Checks a new entry and fills in the server-assigned fields.
fn prepare_new_entry(mut entry: RegistrationEntry, now: i64) -> Result<RegistrationEntry> {
    if entry.selectors.is_empty() {
        return Err(DatastoreError::Invalid("entry needs at least one selector".into()));
    }
    if entry.id.is_empty() {
        entry.id = uuid::Uuid::new_v4().to_string();
    } else {
        check_entry_id(&entry.id)?;
    }
    // SPIRE's numbering: a new entry is at revision 0; every update adds one.
    entry.revision = 0;
    entry.created_at = now;
    Ok(entry)
}

/// The message for an entry that would duplicate another (same SPIFFE ID, parent ID and selector set).
fn duplicate_entry(conn: &Connection, e: &RegistrationEntry, key: &str) -> DatastoreError {
    let other: Option<String> = conn
        .query_row(
            "SELECT id FROM entries WHERE spiffe_id = ?1 AND parent_id = ?2 AND selector_key = ?3 AND id <> ?4",
            params![e.spiffe_id.as_str(), e.parent_id.as_str(), key, e.id],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    match other {
        // SPIRE's exact message (scripts match `msg: "similar entry already exists"`); which entry it is
        // goes to the log.
        Some(other) => {
            tracing::info!(
                existing = %other, spiffe_id = %e.spiffe_id, parent_id = %e.parent_id,
                "entry refused: an entry with the same spiffe_id, parent_id and selectors exists"
            );
            DatastoreError::AlreadyExists("similar entry already exists".into())
        }
        None => DatastoreError::AlreadyExists(format!("an entry with id {:?} already exists", e.id)),
    }
}

fn write_entry_selectors(conn: &Connection, e: &RegistrationEntry) -> Result<()> {
    conn.execute("DELETE FROM entry_selectors WHERE entry_id = ?1", params![e.id])?;
    let mut stmt = conn.prepare_cached("INSERT INTO entry_selectors (entry_id, pos, selector) VALUES (?1, ?2, ?3)")?;
    for (pos, sel) in e.selectors.iter().enumerate() {
        stmt.execute(params![e.id, pos as i64, sel.to_string()])?;
    }
    Ok(())
}

/// The columns shared by insert and update, in `ENTRY_WRITE_COLUMNS` order (after `id`).
fn entry_values(e: &RegistrationEntry, key: &str) -> Result<Vec<Value>> {
    let federates: Vec<&str> = e.federates_with.iter().map(TrustDomain::name).collect();
    Ok(vec![
        Value::Text(e.spiffe_id.as_str().to_owned()),
        Value::Text(e.parent_id.as_str().to_owned()),
        Value::Text(key.to_owned()),
        Value::Text(to_json(&selector_strings(&e.selectors))?),
        Value::Integer(i64::from(e.x509_svid_ttl)),
        Value::Integer(i64::from(e.jwt_svid_ttl)),
        Value::Text(to_json(&e.dns_names)?),
        Value::Text(to_json(&federates)?),
        Value::Integer(i64::from(e.admin)),
        Value::Integer(i64::from(e.downstream)),
        Value::Text(e.hint.clone()),
        Value::Integer(e.entry_expiry),
        Value::Integer(e.revision),
        Value::Integer(e.created_at),
        Value::Integer(i64::from(e.store_svid)),
    ])
}

fn insert_entry(conn: &Connection, e: &RegistrationEntry) -> Result<()> {
    let key = selector_key(&e.selectors)?;
    let mut values = vec![Value::Text(e.id.clone())];
    values.extend(entry_values(e, &key)?);
    let inserted = conn.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, selector_key, selectors, x509_svid_ttl, jwt_svid_ttl, \
         dns_names, federates_with, admin, downstream, hint, entry_expiry, revision, created_at, store_svid) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params_from_iter(values.iter()),
    );
    match inserted {
        Ok(_) => write_entry_selectors(conn, e),
        Err(err) if is_unique_violation(&err) => Err(duplicate_entry(conn, e, &key)),
        Err(err) => Err(err.into()),
    }
}

fn update_entry_row(conn: &Connection, e: &RegistrationEntry) -> Result<()> {
    let key = selector_key(&e.selectors)?;
    let mut values = entry_values(e, &key)?;
    values.push(Value::Text(e.id.clone()));
    let updated = conn.execute(
        "UPDATE entries SET spiffe_id = ?1, parent_id = ?2, selector_key = ?3, selectors = ?4, \
         x509_svid_ttl = ?5, jwt_svid_ttl = ?6, dns_names = ?7, federates_with = ?8, admin = ?9, \
         downstream = ?10, hint = ?11, entry_expiry = ?12, revision = ?13, created_at = ?14, store_svid = ?15 \
         WHERE id = ?16",
        params_from_iter(values.iter()),
    );
    match updated {
        Ok(1) => write_entry_selectors(conn, e),
        Ok(_) => Err(DatastoreError::NotFound(format!("entry {}", e.id))),
        Err(err) if is_unique_violation(&err) => Err(duplicate_entry(conn, e, &key)),
        Err(err) => Err(err.into()),
    }
}

/// The WHERE clause (without the keyword) and its parameters for a filter.
fn filter_sql(filter: &EntryFilter) -> Result<(Vec<String>, Vec<Value>)> {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    let mut bind = |conds: &mut Vec<String>, cond: &str, v: Value| {
        params.push(v);
        conds.push(cond.replace('?', &format!("?{}", params.len())));
    };
    if let Some(id) = &filter.by_spiffe_id {
        bind(&mut conds, "e.spiffe_id = ?", Value::Text(id.as_str().to_owned()));
    }
    if let Some(id) = &filter.by_parent_id {
        bind(&mut conds, "e.parent_id = ?", Value::Text(id.as_str().to_owned()));
    }
    if let Some(hint) = &filter.by_hint {
        bind(&mut conds, "e.hint = ?", Value::Text(hint.clone()));
    }
    if let Some(downstream) = filter.by_downstream {
        bind(&mut conds, "e.downstream = ?", Value::Integer(i64::from(downstream)));
    }
    if let Some((selectors, mode)) = &filter.by_selectors {
        if selectors.is_empty() {
            return Err(DatastoreError::Invalid("selector filter needs at least one selector".into()));
        }
        let set = selector_set_json(selectors)?;
        match mode {
            SelectorMatch::Exact => {
                bind(&mut conds, "e.selector_key = ?", Value::Text(selector_key(selectors)?));
            }
            SelectorMatch::Subset => bind(
                &mut conds,
                "NOT EXISTS (SELECT 1 FROM entry_selectors s WHERE s.entry_id = e.id \
                 AND s.selector NOT IN (SELECT value FROM json_each(?)))",
                Value::Text(set),
            ),
            SelectorMatch::Superset => {
                let wanted = selectors.iter().collect::<BTreeSet<_>>().len() as i64;
                let cond = format!(
                    "(SELECT COUNT(DISTINCT s.selector) FROM entry_selectors s WHERE s.entry_id = e.id \
                     AND s.selector IN (SELECT value FROM json_each(?))) = {wanted}"
                );
                bind(&mut conds, &cond, Value::Text(set));
            }
            SelectorMatch::Any => bind(
                &mut conds,
                "EXISTS (SELECT 1 FROM entry_selectors s WHERE s.entry_id = e.id \
                 AND s.selector IN (SELECT value FROM json_each(?)))",
                Value::Text(set),
            ),
        }
    }
    Ok((conds, params))
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) }
}

fn list_entries_sync(
    conn: &Connection,
    filter: &EntryFilter,
    page: &Page,
) -> Result<(Vec<RegistrationEntry>, Option<String>)> {
    let (mut conds, mut params) = filter_sql(filter)?;
    if let Some(token) = page.token.as_deref().filter(|t| !t.is_empty()) {
        params.push(Value::Text(token.to_owned()));
        conds.push(format!("e.id > ?{}", params.len()));
    }
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM entries e{} ORDER BY e.id", where_clause(&conds));
    if page.size > 0 {
        // One more than asked, to know whether another page follows.
        sql.push_str(&format!(" LIMIT {}", u64::from(page.size) + 1));
    }
    let mut entries = query_entries(conn, &sql, &params)?;
    let size = page.size as usize;
    let next = if page.size > 0 && entries.len() > size {
        entries.truncate(size);
        entries.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok((entries, next))
}

// ----- agents -----

/// An agents row before its text columns are parsed.
struct AgentRow {
    spiffe_id: String,
    attestation_type: String,
    cert_serial: String,
    cert_expires_at: i64,
    selectors: String,
    banned: bool,
    created_at: i64,
    updated_at: i64,
    new_cert_serial: String,
    new_cert_expires_at: i64,
}

impl AgentRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            spiffe_id: r.get(0)?,
            attestation_type: r.get(1)?,
            cert_serial: r.get(2)?,
            cert_expires_at: r.get(3)?,
            selectors: r.get(4)?,
            banned: r.get(5)?,
            created_at: r.get(6)?,
            updated_at: r.get(7)?,
            new_cert_serial: r.get(8)?,
            new_cert_expires_at: r.get(9)?,
        })
    }

    fn decode(self) -> Result<AttestedAgent> {
        let what = format!("agent {}", self.spiffe_id);
        Ok(AttestedAgent {
            spiffe_id: SpiffeId::new(&self.spiffe_id).map_err(|e| corrupt(&what, e))?,
            attestation_type: self.attestation_type,
            cert_serial: self.cert_serial,
            cert_expires_at: self.cert_expires_at,
            selectors: parse_selectors(&what, &self.selectors)?,
            banned: self.banned,
            created_at: self.created_at,
            updated_at: self.updated_at,
            new_cert_serial: self.new_cert_serial,
            new_cert_expires_at: self.new_cert_expires_at,
        })
    }
}

fn load_agent(conn: &Connection, id: &str) -> Result<Option<AttestedAgent>> {
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE spiffe_id = ?1");
    conn.query_row(&sql, params![id], AgentRow::from_row).optional()?.map(AgentRow::decode).transpose()
}

// ----- bundles -----

fn load_bundle(conn: &Connection, td: &str) -> Result<Option<Bundle>> {
    let head: Option<(i64, Option<i64>)> = conn
        .query_row("SELECT sequence, refresh_hint_secs FROM bundles WHERE trust_domain = ?1", params![td], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((sequence, refresh_hint)) = head else {
        return Ok(None);
    };
    let what = format!("bundle of {td}");
    let trust_domain = TrustDomain::new(td).map_err(|e| corrupt(&what, e))?;
    let mut stmt =
        conn.prepare_cached("SELECT cert_der FROM bundle_x509_authorities WHERE trust_domain = ?1 ORDER BY pos")?;
    let x509_authorities = stmt.query_map(params![td], |r| r.get(0))?.collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT key_id, public_key_spki_der, expires_at FROM bundle_jwt_authorities \
         WHERE trust_domain = ?1 ORDER BY pos",
    )?;
    let jwt_authorities = stmt
        .query_map(params![td], |r| {
            Ok(JwtAuthority { key_id: r.get(0)?, public_key_spki_der: r.get(1)?, expires_at: r.get(2)? })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Bundle {
        trust_domain,
        x509_authorities,
        jwt_authorities,
        // u64 values are stored as their i64 bit pattern, so every value round-trips.
        sequence: sequence.cast_unsigned(),
        refresh_hint_secs: refresh_hint.map(i64::cast_unsigned),
    }))
}

fn store_bundle(conn: &Connection, b: &Bundle) -> Result<()> {
    let td = b.trust_domain.name();
    conn.execute(
        "INSERT INTO bundles (trust_domain, sequence, refresh_hint_secs) VALUES (?1, ?2, ?3) \
         ON CONFLICT (trust_domain) DO UPDATE SET sequence = excluded.sequence, \
         refresh_hint_secs = excluded.refresh_hint_secs",
        params![td, b.sequence.cast_signed(), b.refresh_hint_secs.map(u64::cast_signed)],
    )?;
    conn.execute("DELETE FROM bundle_x509_authorities WHERE trust_domain = ?1", params![td])?;
    conn.execute("DELETE FROM bundle_jwt_authorities WHERE trust_domain = ?1", params![td])?;
    let mut stmt =
        conn.prepare_cached("INSERT INTO bundle_x509_authorities (trust_domain, pos, cert_der) VALUES (?1, ?2, ?3)")?;
    for (pos, der) in b.x509_authorities.iter().enumerate() {
        stmt.execute(params![td, pos as i64, der])?;
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO bundle_jwt_authorities (trust_domain, pos, key_id, public_key_spki_der, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (pos, k) in b.jwt_authorities.iter().enumerate() {
        stmt.execute(params![td, pos as i64, k.key_id, k.public_key_spki_der, k.expires_at])?;
    }
    Ok(())
}

// ----- federation relationships -----

const PROFILE_HTTPS_WEB: &str = "https_web";
const PROFILE_HTTPS_SPIFFE: &str = "https_spiffe";

/// The profile and endpoint SPIFFE ID columns of a relationship.
fn profile_columns(p: &BundleEndpointProfile) -> (&'static str, &str) {
    match p {
        BundleEndpointProfile::HttpsWeb => (PROFILE_HTTPS_WEB, ""),
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            (PROFILE_HTTPS_SPIFFE, endpoint_spiffe_id.as_str())
        }
    }
}

fn decode_relationship(
    td: String,
    url: String,
    profile: String,
    endpoint: String,
    managed_by: String,
) -> Result<FederationRelationship> {
    let what = format!("federation relationship {td}");
    let profile = match profile.as_str() {
        PROFILE_HTTPS_WEB => BundleEndpointProfile::HttpsWeb,
        PROFILE_HTTPS_SPIFFE => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::new(&endpoint).map_err(|e| corrupt(&what, e))?,
        },
        other => return Err(corrupt(&what, format!("unknown profile {other:?}"))),
    };
    Ok(FederationRelationship {
        trust_domain: TrustDomain::new(&td).map_err(|e| corrupt(&what, e))?,
        bundle_endpoint_url: url,
        profile,
        managed_by,
    })
}

const RELATIONSHIP_COLUMNS: &str = "trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, managed_by";

fn load_relationship(conn: &Connection, td: &str) -> Result<Option<FederationRelationship>> {
    let sql = format!("SELECT {RELATIONSHIP_COLUMNS} FROM federation_relationships WHERE trust_domain = ?1");
    conn.query_row(&sql, params![td], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?
        .map(|(td, url, profile, endpoint, managed_by)| decode_relationship(td, url, profile, endpoint, managed_by))
        .transpose()
}

/// The foreign bundle given with a relationship must be that trust domain's.
fn check_relationship_bundle(rel: &FederationRelationship, bundle: Option<&Bundle>) -> Result<()> {
    match bundle {
        Some(b) if b.trust_domain != rel.trust_domain => Err(DatastoreError::Invalid(format!(
            "bundle of trust domain {} given with the federation relationship of {}",
            b.trust_domain, rel.trust_domain
        ))),
        _ => Ok(()),
    }
}

/// Runs `item` for every input inside `tx`, each under a savepoint of its own so that a failed item leaves
/// no partial rows behind while the others go on.
///
/// SQLite rolls the whole transaction back by itself on some errors (an I/O error, a temporary file it
/// cannot create, an interrupt). The items after that would run in autocommit mode, each committed on its
/// own, while the final COMMIT fails and the caller reports the whole batch as failed. So once the
/// transaction is gone the batch stops and fails as a whole: nothing of it was written.
fn run_batch<I, T>(
    tx: &mut Transaction<'_>,
    inputs: Vec<I>,
    mut item: impl FnMut(&Connection, I) -> Result<T>,
) -> Result<Vec<Result<T>>> {
    let mut results = Vec::with_capacity(inputs.len());
    for input in inputs {
        let sp = tx.savepoint()?;
        let result = item(&sp, input);
        match &result {
            Ok(_) => sp.commit()?,
            // Dropping the savepoint rolls the item back (ROLLBACK TO, RELEASE).
            Err(e) => {
                drop(sp);
                if tx.is_autocommit() {
                    return Err(DatastoreError::Backend(format!(
                        "sqlite rolled back the whole batch (nothing was written): {e}"
                    )));
                }
            }
        }
        results.push(result);
    }
    Ok(results)
}

#[async_trait::async_trait]
impl Datastore for SqliteDatastore {
    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        self.run(move |conn| {
            let entry = prepare_new_entry(entry, now_unix())?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_entry(&tx, &entry)?;
            tx.commit()?;
            Ok(entry)
        })
        .await
    }

    async fn create_entries(&self, entries: Vec<RegistrationEntry>) -> Vec<Result<RegistrationEntry>> {
        let n = entries.len();
        let outcome = self
            .run(move |conn| {
                let now = now_unix();
                let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let results = run_batch(&mut tx, entries, |conn, entry| {
                    let entry = prepare_new_entry(entry, now)?;
                    insert_entry(conn, &entry)?;
                    Ok(entry)
                })?;
                tx.commit()?;
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn update_entry(
        &self,
        entry: RegistrationEntry,
        expected_revision: Option<i64>,
    ) -> Result<RegistrationEntry> {
        self.run(move |conn| {
            if entry.selectors.is_empty() {
                return Err(DatastoreError::Invalid("entry needs at least one selector".into()));
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<(i64, i64)> = tx
                .query_row("SELECT revision, created_at FROM entries WHERE id = ?1", params![entry.id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((revision, created_at)) = current else {
                return Err(DatastoreError::NotFound(format!("entry {}", entry.id)));
            };
            if let Some(expected) = expected_revision
                && expected != revision
            {
                return Err(DatastoreError::Conflict(format!(
                    "entry {} is at revision {revision}, not {expected}",
                    entry.id
                )));
            }
            let updated = RegistrationEntry { revision: revision + 1, created_at, ..entry };
            update_entry_row(&tx, &updated)?;
            tx.commit()?;
            Ok(updated)
        })
        .await
    }

    async fn delete_entries(&self, ids: &[String]) -> Vec<Result<RegistrationEntry>> {
        let ids = ids.to_vec();
        let n = ids.len();
        let outcome = self
            .run(move |conn| {
                let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let results = run_batch(&mut tx, ids, |conn, id| match load_entry(conn, &id)? {
                    None => Err(DatastoreError::NotFound(format!("entry {id}"))),
                    Some(entry) => {
                        conn.execute("DELETE FROM entries WHERE id = ?1", params![id])?;
                        Ok(entry)
                    }
                })?;
                tx.commit()?;
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>> {
        let id = id.to_owned();
        self.run(move |conn| load_entry(conn, &id)).await
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, Option<String>)> {
        let (filter, page) = (filter.clone(), page.clone());
        self.run(move |conn| list_entries_sync(conn, &filter, &page)).await
    }

    async fn count_entries(&self, filter: &EntryFilter) -> Result<u64> {
        let filter = filter.clone();
        self.run(move |conn| {
            let (conds, params) = filter_sql(&filter)?;
            let sql = format!("SELECT COUNT(*) FROM entries e{}", where_clause(&conds));
            let count: i64 = conn.query_row(&sql, params_from_iter(params.iter()), |r| r.get(0))?;
            u64::try_from(count).map_err(|e| DatastoreError::Backend(format!("negative count: {e}")))
        })
        .await
    }

    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>> {
        self.run(|conn| {
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries e ORDER BY e.id");
            query_entries(conn, &sql, &[])
        })
        .await
    }

    async fn create_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent> {
        self.run(move |conn| {
            let now = now_unix();
            let created_at = if agent.created_at == 0 { now } else { agent.created_at };
            let updated_at = if agent.updated_at == 0 { now } else { agent.updated_at };
            let agent = AttestedAgent { created_at, updated_at, ..agent };
            let inserted = conn.execute(
                "INSERT INTO agents (spiffe_id, attestation_type, cert_serial, cert_expires_at, selectors, banned, \
                 created_at, updated_at, new_cert_serial, new_cert_expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    agent.spiffe_id.as_str(),
                    agent.attestation_type,
                    agent.cert_serial,
                    agent.cert_expires_at,
                    to_json(&selector_strings(&agent.selectors))?,
                    agent.banned,
                    agent.created_at,
                    agent.updated_at,
                    agent.new_cert_serial,
                    agent.new_cert_expires_at,
                ],
            );
            match inserted {
                Ok(_) => Ok(agent),
                Err(e) if is_unique_violation(&e) => {
                    Err(DatastoreError::AlreadyExists(format!("agent {}", agent.spiffe_id)))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AttestedAgent>> {
        let id = id.as_str().to_owned();
        self.run(move |conn| load_agent(conn, &id)).await
    }

    async fn list_agents(&self) -> Result<Vec<AttestedAgent>> {
        self.run(|conn| {
            let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY spiffe_id");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([], AgentRow::from_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?.decode()?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent> {
        self.run(move |conn| {
            let updated_at = if agent.updated_at == 0 { now_unix() } else { agent.updated_at };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE agents SET attestation_type = ?1, cert_serial = ?2, cert_expires_at = ?3, selectors = ?4, \
                 updated_at = ?5, new_cert_serial = ?6, new_cert_expires_at = ?7 WHERE spiffe_id = ?8",
                params![
                    agent.attestation_type,
                    agent.cert_serial,
                    agent.cert_expires_at,
                    to_json(&selector_strings(&agent.selectors))?,
                    updated_at,
                    agent.new_cert_serial,
                    agent.new_cert_expires_at,
                    agent.spiffe_id.as_str(),
                ],
            )?;
            if changed == 0 {
                return Err(DatastoreError::NotFound(format!("agent {}", agent.spiffe_id)));
            }
            let stored = load_agent(&tx, agent.spiffe_id.as_str())?
                .ok_or_else(|| DatastoreError::NotFound(format!("agent {}", agent.spiffe_id)))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn delete_agent(&self, id: &SpiffeId) -> Result<()> {
        let id = id.clone();
        self.run(move |conn| match conn.execute("DELETE FROM agents WHERE spiffe_id = ?1", params![id.as_str()])? {
            0 => Err(DatastoreError::NotFound(format!("agent {id}"))),
            _ => Ok(()),
        })
        .await
    }

    async fn set_agent_banned(&self, id: &SpiffeId, banned: bool) -> Result<()> {
        let id = id.clone();
        self.run(move |conn| {
            match conn.execute("UPDATE agents SET banned = ?1 WHERE spiffe_id = ?2", params![banned, id.as_str()])? {
                0 => Err(DatastoreError::NotFound(format!("agent {id}"))),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        if token.is_empty() {
            return Err(DatastoreError::Invalid("join token is empty".into()));
        }
        let token = token.to_owned();
        self.run(move |conn| {
            match conn
                .execute("INSERT INTO join_tokens (token, expires_at) VALUES (?1, ?2)", params![token, expires_at])
            {
                Ok(_) => Ok(()),
                // The token is a secret: it is not repeated in the message.
                Err(e) if is_unique_violation(&e) => Err(DatastoreError::AlreadyExists("join token".into())),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn consume_join_token(&self, token: &str, now: i64) -> Result<JoinTokenOutcome> {
        let token = token.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expires_at: Option<i64> = tx
                .query_row("DELETE FROM join_tokens WHERE token = ?1 RETURNING expires_at", params![token], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.commit()?;
            Ok(match expires_at {
                None => JoinTokenOutcome::NotFound,
                Some(exp) if exp <= now => JoinTokenOutcome::Expired,
                Some(_) => JoinTokenOutcome::Valid,
            })
        })
        .await
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        self.run(move |conn| {
            let n = conn.execute("DELETE FROM join_tokens WHERE expires_at <= ?1", params![now])?;
            Ok(n as u64)
        })
        .await
    }

    async fn set_bundle(&self, bundle: Bundle) -> Result<()> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            store_bundle(&tx, &bundle)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Bundle>> {
        let td = trust_domain.name().to_owned();
        self.run(move |conn| load_bundle(conn, &td)).await
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        self.run(|conn| {
            // One read transaction, so the list is a consistent snapshot.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let tds = {
                let mut stmt = tx.prepare_cached("SELECT trust_domain FROM bundles ORDER BY trust_domain")?;
                stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut out = Vec::with_capacity(tds.len());
            for td in tds {
                if let Some(b) = load_bundle(&tx, &td)? {
                    out.push(b);
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<()> {
        let td = trust_domain.clone();
        self.run(move |conn| match conn.execute("DELETE FROM bundles WHERE trust_domain = ?1", params![td.name()])? {
            0 => Err(DatastoreError::NotFound(format!("bundle of trust domain {td}"))),
            _ => Ok(()),
        })
        .await
    }

    async fn create_federation_relationship(
        &self,
        relationship: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship> {
        check_relationship_bundle(&relationship, bundle.as_ref())?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (profile, endpoint) = profile_columns(&relationship.profile);
            let inserted = tx.execute(
                "INSERT INTO federation_relationships \
                 (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, managed_by) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    relationship.trust_domain.name(),
                    relationship.bundle_endpoint_url,
                    profile,
                    endpoint,
                    relationship.managed_by
                ],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(DatastoreError::AlreadyExists(format!(
                        "a federation relationship with trust domain {} already exists",
                        relationship.trust_domain
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(b) = &bundle {
                store_bundle(&tx, b)?;
            }
            tx.commit()?;
            Ok(relationship)
        })
        .await
    }

    async fn update_federation_relationship(
        &self,
        relationship: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship> {
        check_relationship_bundle(&relationship, bundle.as_ref())?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (profile, endpoint) = profile_columns(&relationship.profile);
            let changed = tx.execute(
                "UPDATE federation_relationships SET bundle_endpoint_url = ?1, profile = ?2, endpoint_spiffe_id = ?3, \
                 managed_by = ?5 WHERE trust_domain = ?4",
                params![
                    relationship.bundle_endpoint_url,
                    profile,
                    endpoint,
                    relationship.trust_domain.name(),
                    relationship.managed_by
                ],
            )?;
            if changed == 0 {
                return Err(DatastoreError::NotFound(format!(
                    "no federation relationship with trust domain {}",
                    relationship.trust_domain
                )));
            }
            if let Some(b) = &bundle {
                store_bundle(&tx, b)?;
            }
            tx.commit()?;
            Ok(relationship)
        })
        .await
    }

    async fn delete_federation_relationship(&self, trust_domain: &TrustDomain) -> Result<()> {
        let td = trust_domain.clone();
        self.run(move |conn| {
            match conn.execute("DELETE FROM federation_relationships WHERE trust_domain = ?1", params![td.name()])? {
                0 => Err(DatastoreError::NotFound(format!("no federation relationship with trust domain {td}"))),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn get_federation_relationship(&self, trust_domain: &TrustDomain) -> Result<Option<FederationRelationship>> {
        let td = trust_domain.name().to_owned();
        self.run(move |conn| load_relationship(conn, &td)).await
    }

    async fn list_federation_relationships(&self) -> Result<Vec<FederationRelationship>> {
        self.run(|conn| {
            let sql = format!("SELECT {RELATIONSHIP_COLUMNS} FROM federation_relationships ORDER BY trust_domain");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (td, url, profile, endpoint, managed_by) = row?;
                out.push(decode_relationship(td, url, profile, endpoint, managed_by)?);
            }
            Ok(out)
        })
        .await
    }

    async fn load_ca_journal(&self) -> Result<Option<Vec<u8>>> {
        self.run(|conn| Ok(conn.query_row("SELECT data FROM ca_journal WHERE id = 1", [], |r| r.get(0)).optional()?))
            .await
    }

    async fn store_ca_journal(&self, journal: Vec<u8>) -> Result<()> {
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO ca_journal (id, data) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                params![journal],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(items: &[&str]) -> Vec<Selector> {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn selector_key_ignores_order_and_repetition() {
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&["a:1", "b:2"], &["b:2", "a:1"], true),
            (&["a:1", "a:1"], &["a:1"], true),
            (&["a:1"], &["a:2"], false),
            // A value containing the separator of a naive join must not collide with two selectors.
            (&["a:1\nb:2"], &["a:1", "b:2"], false),
            (&["a:1,b:2"], &["a:1", "b:2"], false),
        ];
        for (x, y, same) in cases {
            let (kx, ky) = (selector_key(&sels(x)).unwrap(), selector_key(&sels(y)).unwrap());
            assert_eq!(kx == ky, *same, "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn entry_id_rules() {
        let cases: &[(&str, bool)] = &[
            ("b3f0c1de-0000-4000-8000-000000000001", true),
            ("my/custom_id.1", true),
            ("has space", false),
            ("tab\t", false),
            ("ünicode", false),
        ];
        for (id, ok) in cases {
            assert_eq!(check_entry_id(id).is_ok(), *ok, "{id:?}");
        }
        assert!(check_entry_id(&"x".repeat(MAX_ENTRY_ID_LEN)).is_ok());
        assert!(check_entry_id(&"x".repeat(MAX_ENTRY_ID_LEN + 1)).is_err());
    }

    async fn rows(ds: &SqliteDatastore, table: &'static str) -> i64 {
        ds.run(move |c| Ok(c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)).await.unwrap()
    }

    /// Deletes and replacements leave no orphan child rows (foreign keys with ON DELETE CASCADE are on).
    #[tokio::test]
    async fn no_orphan_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3")).await.unwrap();
        let e = sigil_core::RegistrationEntry::new(
            SpiffeId::new("spiffe://td/web").unwrap(),
            SpiffeId::new("spiffe://td/agent").unwrap(),
            sels(&["a:1", "b:2", "c:3"]),
        );
        let created = ds.create_entry(e).await.unwrap();
        assert_eq!(rows(&ds, "entry_selectors").await, 3);
        let fewer = RegistrationEntry { selectors: sels(&["a:1"]), ..created.clone() };
        ds.update_entry(fewer, None).await.unwrap();
        assert_eq!(rows(&ds, "entry_selectors").await, 1);
        assert!(ds.delete_entries(&[created.id]).await[0].is_ok());
        assert_eq!(rows(&ds, "entry_selectors").await, 0);

        let td = TrustDomain::new("td").unwrap();
        let bundle = Bundle {
            trust_domain: td.clone(),
            x509_authorities: vec![vec![1], vec![2]],
            jwt_authorities: vec![JwtAuthority { key_id: "k".into(), public_key_spki_der: vec![3], expires_at: 0 }],
            sequence: 1,
            refresh_hint_secs: None,
        };
        ds.set_bundle(bundle).await.unwrap();
        assert_eq!((rows(&ds, "bundle_x509_authorities").await, rows(&ds, "bundle_jwt_authorities").await), (2, 1));
        ds.delete_bundle(&td).await.unwrap();
        assert_eq!((rows(&ds, "bundle_x509_authorities").await, rows(&ds, "bundle_jwt_authorities").await), (0, 0));
    }

    /// A relationship and the bundle given with it are written together; delete keeps the bundle.
    #[tokio::test]
    async fn federation_relationship_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3")).await.unwrap();
        let td = TrustDomain::new("partner.test").unwrap();
        let rel = FederationRelationship {
            trust_domain: td.clone(),
            bundle_endpoint_url: "https://partner.test/".into(),
            profile: BundleEndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new("spiffe://partner.test/spire/server").unwrap(),
            },
            managed_by: "sigil-operator/test".into(),
        };
        let bundle = Bundle { x509_authorities: vec![vec![7]], ..Bundle::new(td.clone()) };
        ds.create_federation_relationship(rel.clone(), Some(bundle.clone())).await.unwrap();
        assert_eq!(ds.get_federation_relationship(&td).await.unwrap(), Some(rel.clone()));
        assert_eq!(ds.get_bundle(&td).await.unwrap(), Some(bundle.clone()));
        assert!(matches!(
            ds.create_federation_relationship(rel.clone(), None).await,
            Err(DatastoreError::AlreadyExists(_))
        ));
        // A bundle of another trust domain is refused and nothing is written.
        let other = Bundle::new(TrustDomain::new("other.test").unwrap());
        let web = FederationRelationship { profile: BundleEndpointProfile::HttpsWeb, ..rel.clone() };
        assert!(matches!(
            ds.update_federation_relationship(web.clone(), Some(other)).await,
            Err(DatastoreError::Invalid(_))
        ));
        assert_eq!(ds.list_federation_relationships().await.unwrap(), vec![rel.clone()]);
        ds.update_federation_relationship(web.clone(), None).await.unwrap();
        assert_eq!(ds.list_federation_relationships().await.unwrap(), vec![web]);
        ds.delete_federation_relationship(&td).await.unwrap();
        assert_eq!(ds.list_federation_relationships().await.unwrap(), vec![]);
        assert_eq!(ds.get_bundle(&td).await.unwrap(), Some(bundle));
        assert!(matches!(ds.delete_federation_relationship(&td).await, Err(DatastoreError::NotFound(_))));
        let unknown = FederationRelationship { trust_domain: TrustDomain::new("nope.test").unwrap(), ..rel };
        assert!(matches!(ds.update_federation_relationship(unknown, None).await, Err(DatastoreError::NotFound(_))));
    }

    /// No temporary files: a savepoint whose journal outgrows SQLite's in-memory spill threshold (64 KiB)
    /// would otherwise need a writable temporary directory, which the server's read-only root filesystem
    /// lacks (reproduced in the chart's e2e: the batch failed with "cannot commit - no transaction is active").
    #[tokio::test]
    async fn temporary_files_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3")).await.unwrap();
        let temp_store: i64 = ds.run(|c| Ok(c.pragma_query_value(None, "temp_store", |r| r.get(0))?)).await.unwrap();
        assert_eq!(temp_store, 2, "temp_store=MEMORY");
        // One batch item big enough to spill its savepoint journal (about 1 MiB of selector rows).
        let many: Vec<String> = (0..4000).map(|i| format!("k8s:pod-label:key{i}:{}", "v".repeat(200))).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let big = RegistrationEntry::new(
            SpiffeId::new("spiffe://td/big").unwrap(),
            SpiffeId::new("spiffe://td/agent").unwrap(),
            sels(&many),
        );
        let small = RegistrationEntry::new(
            SpiffeId::new("spiffe://td/small").unwrap(),
            SpiffeId::new("spiffe://td/agent").unwrap(),
            sels(&["a:1"]),
        );
        let results = ds.create_entries(vec![big, small.clone(), small]).await;
        assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
        assert!(matches!(results[2], Err(DatastoreError::AlreadyExists(_))), "{:?}", results[2]);
        assert_eq!(rows(&ds, "entries").await, 2);
        assert_eq!(rows(&ds, "entry_selectors").await, 4001);
    }

    /// When SQLite rolls the whole transaction back by itself (an I/O error, an interrupt), the batch stops
    /// and fails as a whole: the items after it must not run in autocommit mode and be written one by one
    /// while the caller is told that the batch failed. The automatic rollback is made here with ROLLBACK,
    /// because the real causes need a broken disk or a racing interrupt.
    #[tokio::test]
    async fn batch_stops_when_sqlite_rolled_the_transaction_back() {
        let dir = tempfile::tempdir().unwrap();
        let ds = SqliteDatastore::open(&dir.path().join("ds.sqlite3")).await.unwrap();
        let (calls, outcome, autocommit) = ds
            .run(|conn| {
                let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut calls = 0;
                let outcome = run_batch(&mut tx, vec!["one", "breaks", "three"], |c, name| {
                    calls += 1;
                    if name == "breaks" {
                        c.execute_batch("ROLLBACK")?;
                        return Err(DatastoreError::Backend("disk I/O error".into()));
                    }
                    let e = RegistrationEntry::new(
                        SpiffeId::new(&format!("spiffe://td/{name}")).unwrap(),
                        SpiffeId::new("spiffe://td/agent").unwrap(),
                        sels(&["a:1"]),
                    );
                    insert_entry(c, &prepare_new_entry(e, 0)?)
                });
                let autocommit = tx.is_autocommit();
                Ok((calls, outcome.map(|r| r.len()), autocommit))
            })
            .await
            .unwrap();
        assert_eq!(calls, 2, "the item after the rollback must not run");
        assert!(autocommit);
        match outcome {
            Err(DatastoreError::Backend(m)) => assert!(m.contains("whole batch") && m.contains("disk I/O"), "{m}"),
            other => panic!("expected the batch to fail, got {other:?}"),
        }
        assert_eq!(rows(&ds, "entries").await, 0, "nothing of the batch is written");

        // An ordinary item error keeps the transaction: the other items are written.
        let ok = RegistrationEntry::new(
            SpiffeId::new("spiffe://td/ok").unwrap(),
            SpiffeId::new("spiffe://td/agent").unwrap(),
            sels(&["a:1"]),
        );
        let bad = RegistrationEntry { selectors: vec![], ..ok.clone() };
        let results = ds.create_entries(vec![bad, ok]).await;
        assert!(matches!(results[0], Err(DatastoreError::Invalid(_))) && results[1].is_ok(), "{results:?}");
        let deleted = ds.delete_entries(&["missing".into(), results[1].as_ref().unwrap().id.clone()]).await;
        assert!(matches!(deleted[0], Err(DatastoreError::NotFound(_))) && deleted[1].is_ok(), "{deleted:?}");
        assert_eq!(rows(&ds, "entries").await, 0);
    }

    #[test]
    fn filter_without_selectors_is_refused() {
        let filter = EntryFilter { by_selectors: Some((vec![], SelectorMatch::Any)), ..Default::default() };
        assert!(matches!(filter_sql(&filter), Err(DatastoreError::Invalid(_))));
    }
}
