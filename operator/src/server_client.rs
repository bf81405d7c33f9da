//! The Sigil server's admin API over its Unix socket, as the operator uses it: list our entries, write batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sigil_proto::admin as apb;
use sigil_proto::admin::entries_client::EntriesClient;
use sigil_proto::types as tpb;
use tonic::transport::{Channel, Endpoint};

/// Batch sizes for writes (spire-controller-manager uses 50 for create/update and 200 for delete; the
/// server takes a whole batch in one datastore transaction, so bigger batches are cheaper here).
pub const WRITE_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin API {call}: {status}")]
    Rpc { call: &'static str, status: String },
    #[error("the server returned an entry the operator can't read: {0}")]
    BadEntry(String),
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |s| ClientError::Rpc { call, status: format!("{:?}: {}", s.code(), s.message()) }
}

/// Outcome of one item of a batch write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    /// The entry as the server stored it (create/update), or `None` for a delete.
    Ok(Option<Box<RegistrationEntry>>),
    /// gRPC code and message.
    Failed { code: i32, message: String },
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    channel: Channel,
}

impl AdminClient {
    /// Connects lazily: the socket is dialled on first use and redialled after failures.
    pub fn new(socket: &Path) -> Self {
        let path: PathBuf = socket.to_owned();
        let channel =
            Endpoint::from_static("http://sigil-admin").connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        Self { channel }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn entries(&self) -> EntriesClient<Channel> {
        EntriesClient::new(self.channel.clone()).max_decoding_message_size(256 * 1024 * 1024)
    }

    /// Every entry whose ID starts with `prefix`, by ID.
    pub async fn list_entries_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<HashMap<String, RegistrationEntry>, ClientError> {
        let mut out = HashMap::new();
        let mut token = String::new();
        loop {
            let resp = self
                .entries()
                .list_entries(apb::ListEntriesRequest { filter: None, page_size: 5000, page_token: token })
                .await
                .map_err(rpc("ListEntries"))?
                .into_inner();
            for e in resp.entries {
                if e.id.starts_with(prefix) {
                    let entry = entry_from_pb(&e)?;
                    out.insert(entry.id.clone(), entry);
                }
            }
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            token = resp.next_page_token;
        }
    }

    pub async fn create(&self, entries: &[RegistrationEntry]) -> Result<Vec<WriteResult>, ClientError> {
        let resp = self
            .entries()
            .batch_create_entry(apb::BatchCreateEntryRequest { entries: entries.iter().map(entry_to_pb).collect() })
            .await
            .map_err(rpc("BatchCreateEntry"))?
            .into_inner();
        resp.results.into_iter().map(|r| result(r.status, r.entry)).collect()
    }

    pub async fn update(&self, entries: &[RegistrationEntry]) -> Result<Vec<WriteResult>, ClientError> {
        let resp = self
            .entries()
            .batch_update_entry(apb::BatchUpdateEntryRequest { entries: entries.iter().map(entry_to_pb).collect() })
            .await
            .map_err(rpc("BatchUpdateEntry"))?
            .into_inner();
        resp.results.into_iter().map(|r| result(r.status, r.entry)).collect()
    }

    pub async fn delete(&self, ids: &[String]) -> Result<Vec<WriteResult>, ClientError> {
        let resp = self
            .entries()
            .batch_delete_entry(apb::BatchDeleteEntryRequest { ids: ids.to_vec() })
            .await
            .map_err(rpc("BatchDeleteEntry"))?
            .into_inner();
        Ok(resp.results.into_iter().map(|r| result(r.status, None).unwrap_or(WriteResult::Ok(None))).collect())
    }
}

fn result(status: Option<apb::Status>, entry: Option<tpb::Entry>) -> Result<WriteResult, ClientError> {
    match status {
        Some(s) if s.code != 0 => Ok(WriteResult::Failed { code: s.code, message: s.message }),
        _ => Ok(WriteResult::Ok(entry.as_ref().map(entry_from_pb).transpose()?.map(Box::new))),
    }
}

pub fn entry_to_pb(e: &RegistrationEntry) -> tpb::Entry {
    tpb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e
            .selectors
            .iter()
            .map(|s| tpb::Selector { r#type: s.kind().into(), value: s.value().into() })
            .collect(),
        x509_svid_ttl: i32::try_from(e.x509_svid_ttl).unwrap_or(i32::MAX),
        jwt_svid_ttl: i32::try_from(e.jwt_svid_ttl).unwrap_or(i32::MAX),
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(|td| td.name().to_owned()).collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        expires_at: e.entry_expiry,
        revision: e.revision,
        created_at: e.created_at,
    }
}

pub fn entry_from_pb(e: &tpb::Entry) -> Result<RegistrationEntry, ClientError> {
    let bad = |what: &str, err: &dyn std::fmt::Display| ClientError::BadEntry(format!("entry {}: {what}: {err}", e.id));
    let mut selectors = e
        .selectors
        .iter()
        .map(|s| Selector::new(&s.r#type, &s.value).map_err(|err| bad("selector", &err)))
        .collect::<Result<Vec<_>, _>>()?;
    selectors.sort();
    Ok(RegistrationEntry {
        id: e.id.clone(),
        spiffe_id: SpiffeId::new(&e.spiffe_id).map_err(|err| bad("spiffe_id", &err))?,
        parent_id: SpiffeId::new(&e.parent_id).map_err(|err| bad("parent_id", &err))?,
        selectors,
        x509_svid_ttl: u32::try_from(e.x509_svid_ttl).unwrap_or(0),
        jwt_svid_ttl: u32::try_from(e.jwt_svid_ttl).unwrap_or(0),
        dns_names: e.dns_names.clone(),
        federates_with: e
            .federates_with
            .iter()
            .map(|td| TrustDomain::new(td).map_err(|err| bad("federates_with", &err)))
            .collect::<Result<Vec<_>, _>>()?,
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        entry_expiry: e.expires_at,
        revision: e.revision,
        created_at: e.created_at,
    })
}
