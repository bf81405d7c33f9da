//! The Sigil server's admin API over its Unix socket, as the operator uses it: list our entries, write batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use sigil_core::RegistrationEntry;
use sigil_proto::admin as apb;
use sigil_proto::admin::entries_client::EntriesClient;
use sigil_proto::convert::{ConvertError, entry_to_pb};
use sigil_proto::types as tpb;
use tonic::transport::{Channel, Endpoint};

use crate::world::ServerCopy;

/// Batch sizes for writes (spire-controller-manager uses 50 for create/update and 200 for delete; the
/// server takes a whole batch in one datastore transaction, so bigger batches are cheaper here).
pub const WRITE_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin API {call}: {status}")]
    Rpc { call: &'static str, status: String },
    #[error("the server returned an entry the operator can't read: entry {id:?}: {error}")]
    BadEntry { id: String, error: ConvertError },
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

    /// What the operator keeps of every entry it made under `prefix`, by ID: converted page by page, so
    /// the whole list of decoded entries is never held at once.
    pub async fn list_server_copies(&self, prefix: &str) -> Result<HashMap<String, ServerCopy>, ClientError> {
        let mut out = HashMap::new();
        self.for_each_entry(
            |id| crate::world::is_own_entry_id(prefix, id),
            |e| {
                out.insert(e.id.clone(), ServerCopy::of(&e));
            },
        )
        .await?;
        Ok(out)
    }

    /// Every entry whose ID passes `keep`, by ID.
    pub async fn list_entries_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, RegistrationEntry>, ClientError> {
        let mut out = HashMap::new();
        self.for_each_entry(keep, |e| {
            out.insert(e.id.clone(), e);
        })
        .await?;
        Ok(out)
    }

    async fn for_each_entry(
        &self,
        keep: impl Fn(&str) -> bool,
        mut each: impl FnMut(RegistrationEntry),
    ) -> Result<(), ClientError> {
        let mut token = String::new();
        loop {
            // Pages of 1,000: the server answers each page under its datastore's lock, and a pod change's
            // write waits for the page in progress.
            let resp = self
                .entries()
                .list_entries(apb::ListEntriesRequest { filter: None, page_size: 1000, page_token: token })
                .await
                .map_err(rpc("ListEntries"))?
                .into_inner();
            for e in resp.entries {
                if keep(&e.id) {
                    each(entry_from_pb(&e)?);
                }
            }
            if resp.next_page_token.is_empty() {
                return Ok(());
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

/// An entry the server returned, as a core entry (the operator only reads what the server validated, so
/// a refusal here means the two disagree on the wire format).
fn entry_from_pb(e: &tpb::Entry) -> Result<RegistrationEntry, ClientError> {
    sigil_proto::convert::entry_from_pb(e).map_err(|error| ClientError::BadEntry { id: e.id.clone(), error })
}

fn result(status: Option<apb::Status>, entry: Option<tpb::Entry>) -> Result<WriteResult, ClientError> {
    match status {
        Some(s) if s.code != 0 => Ok(WriteResult::Failed { code: s.code, message: s.message }),
        _ => Ok(WriteResult::Ok(entry.as_ref().map(entry_from_pb).transpose()?.map(Box::new))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_entries_with_the_shared_conversion() {
        let good = tpb::Entry {
            id: "op.1".into(),
            spiffe_id: "spiffe://td/w".into(),
            parent_id: "spiffe://td/p".into(),
            ..Default::default()
        };
        match result(None, Some(good.clone())).unwrap() {
            WriteResult::Ok(Some(e)) => {
                assert_eq!((e.id.as_str(), e.spiffe_id.to_string()), ("op.1", "spiffe://td/w".into()))
            }
            other => panic!("{other:?}"),
        }
        let failed = apb::Status { code: 6, message: "exists".into() };
        assert_eq!(result(Some(failed), None).unwrap(), WriteResult::Failed { code: 6, message: "exists".into() });
        let bad = tpb::Entry { x509_svid_ttl: -1, ..good };
        match result(None, Some(bad)).unwrap_err() {
            ClientError::BadEntry { id, error } => {
                assert_eq!((id.as_str(), error.field), ("op.1", "x509_svid_ttl"));
            }
            other => panic!("{other:?}"),
        }
    }
}
