//! `sigil-server entry ...`: SPIRE's flags, pretty layout and `-output json` shapes (see `output.rs`), and
//! SPIRE's `-data` registration file (`cmd/spire-server/cli/entry/util.go` `parseEntryJSON` in spiffe/spire
//! v1.13.6).

use std::io::{Read, Write};

use serde::Deserialize;
use sigil_core::TrustDomain;
use sigil_proto::admin::{self as pb, entries_client::EntriesClient};
use sigil_proto::types as tpb;

use super::args::{EntryCmd, EntryFields, EntryFilterArgs, Output};
use super::output::{entries_json, entry_results_json, print_json};
use super::{CliError, admin_channel, all_pages, code_name, parse_id, parse_selector, rpc};
use crate::api::convert;

/// Go's `time.Time.String()` in UTC, as SPIRE prints an entry's expiry: `2027-01-15 08:00:00 +0000 UTC`.
fn go_utc(unix: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The note printed (on stderr) when `-ttl` is used.
const TTL_DEPRECATED: &str = "warning: -ttl is deprecated, use -x509SVIDTTL";

/// Folds SPIRE's deprecated `-ttl` into `-x509SVIDTTL`. Returns whether the deprecation note is due; both
/// flags together are refused (which one was meant is not ours to guess).
fn fold_ttl_alias(f: &mut EntryFields) -> Result<bool, CliError> {
    match (f.ttl.take(), f.x509_svid_ttl) {
        (Some(_), Some(_)) => Err(CliError::Invalid(
            "-ttl and -x509SVIDTTL are the same setting (-ttl is its deprecated name): give only -x509SVIDTTL".into(),
        )),
        (Some(ttl), None) => {
            f.x509_svid_ttl = Some(ttl);
            Ok(true)
        }
        (None, _) => Ok(false),
    }
}

/// [`fold_ttl_alias`], printing the note on stderr.
fn fold_ttl_alias_noting(f: &mut EntryFields) -> Result<(), CliError> {
    if fold_ttl_alias(f)? {
        eprintln!("{TTL_DEPRECATED}");
    }
    Ok(())
}

fn entry_from_fields(f: &EntryFields, trust_domain_hint: Option<&TrustDomain>) -> Result<tpb::Entry, CliError> {
    let spiffe_id = f.spiffe_id.as_deref().ok_or_else(|| CliError::Invalid("-spiffeID is required".into()))?;
    let spiffe_id = parse_id("spiffeID", spiffe_id)?;
    let parent_id = if f.node {
        if f.parent_id.is_some() {
            return Err(CliError::Invalid("-node and -parentID are mutually exclusive".into()));
        }
        let td = trust_domain_hint.cloned().unwrap_or_else(|| spiffe_id.trust_domain());
        td.join(sigil_core::entry::SERVER_ID_PATH).map_err(|e| CliError::Invalid(e.to_string()))?
    } else {
        let p = f.parent_id.as_deref().ok_or_else(|| CliError::Invalid("-parentID is required (or -node)".into()))?;
        parse_id("parentID", p)?
    };
    if f.selectors.is_empty() {
        return Err(CliError::Invalid("at least one -selector type:value is required".into()));
    }
    let selectors = f.selectors.iter().map(|s| parse_selector(s)).collect::<Result<Vec<_>, _>>()?;
    for td in &f.federates_with {
        TrustDomain::new(td).map_err(|e| CliError::Invalid(format!("-federatesWith: {e}")))?;
    }
    Ok(tpb::Entry {
        id: String::new(),
        spiffe_id: spiffe_id.to_string(),
        parent_id: parent_id.to_string(),
        selectors,
        x509_svid_ttl: f.x509_svid_ttl.unwrap_or(0),
        jwt_svid_ttl: f.jwt_svid_ttl.unwrap_or(0),
        dns_names: f.dns.clone(),
        federates_with: f.federates_with.iter().map(|td| td.trim_start_matches("spiffe://").to_owned()).collect(),
        admin: f.admin,
        downstream: f.downstream,
        hint: f.hint.clone().unwrap_or_default(),
        expires_at: f.entry_expiry.unwrap_or(0),
        revision: 0,
        created_at: 0,
        store_svid: f.store_svid,
    })
}

fn filter_from_args(f: &EntryFilterArgs) -> Result<pb::EntryFilter, CliError> {
    let selector_match = match f.match_selectors_on.as_str() {
        "exact" => pb::SelectorMatch::Exact,
        "subset" => pb::SelectorMatch::Subset,
        "superset" => pb::SelectorMatch::Superset,
        "any" => pb::SelectorMatch::Any,
        other => {
            return Err(CliError::Invalid(format!(
                "-matchSelectorsOn: {other:?} is not one of exact, subset, superset, any"
            )));
        }
    };
    Ok(pb::EntryFilter {
        by_spiffe_id: f
            .spiffe_id
            .as_deref()
            .map(|v| parse_id("spiffeID", v).map(|i| i.to_string()))
            .transpose()?
            .unwrap_or_default(),
        by_parent_id: f
            .parent_id
            .as_deref()
            .map(|v| parse_id("parentID", v).map(|i| i.to_string()))
            .transpose()?
            .unwrap_or_default(),
        by_selectors: f.selectors.iter().map(|s| parse_selector(s)).collect::<Result<Vec<_>, _>>()?,
        selector_match: selector_match as i32,
        by_hint: f.hint.clone().unwrap_or_default(),
    })
}

fn ttl_text(v: i32) -> String {
    if v == 0 { "default".into() } else { v.to_string() }
}

/// SPIRE's entry layout, so scripts that grep it keep working.
fn print_entry(out: &mut impl Write, e: &tpb::Entry) -> std::io::Result<()> {
    writeln!(out, "Entry ID         : {}", if e.id.is_empty() { "(none)" } else { &e.id })?;
    writeln!(out, "SPIFFE ID        : {}", e.spiffe_id)?;
    writeln!(out, "Parent ID        : {}", e.parent_id)?;
    writeln!(out, "Revision         : {}", e.revision)?;
    if e.downstream {
        writeln!(out, "Downstream       : true")?;
    }
    writeln!(out, "X509-SVID TTL    : {}", ttl_text(e.x509_svid_ttl))?;
    writeln!(out, "JWT-SVID TTL     : {}", ttl_text(e.jwt_svid_ttl))?;
    if e.expires_at != 0 {
        writeln!(out, "Expiration time  : {}", go_utc(e.expires_at))?;
    }
    for s in &e.selectors {
        writeln!(out, "Selector         : {}:{}", s.r#type, s.value)?;
    }
    for td in &e.federates_with {
        writeln!(out, "FederatesWith    : {td}")?;
    }
    for d in &e.dns_names {
        writeln!(out, "DNS name         : {d}")?;
    }
    if e.admin {
        writeln!(out, "Admin            : true")?;
    }
    if e.store_svid {
        writeln!(out, "StoreSvid        : true")?;
    }
    if !e.hint.is_empty() {
        writeln!(out, "Hint             : {}", e.hint)?;
    }
    writeln!(out)
}

/// One entry of SPIRE's registration file: `spire.common.RegistrationEntry` as Go's encoding/json reads it
/// (`proto/spire/common/common.pb.go` json tags; IDs are strings, the expiry is `entryExpiry`). Unknown keys
/// are ignored, as Go does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileEntry {
    selectors: Vec<FileSelector>,
    parent_id: String,
    spiffe_id: String,
    x509_svid_ttl: i32,
    federates_with: Vec<String>,
    entry_id: String,
    admin: bool,
    downstream: bool,
    #[serde(rename = "entryExpiry")]
    entry_expiry: i64,
    dns_names: Vec<String>,
    revision_number: i64,
    store_svid: bool,
    jwt_svid_ttl: i32,
    hint: String,
    created_at: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileSelector {
    r#type: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileEntries {
    entries: Vec<FileEntry>,
}

/// SPIRE's `-data`: the file (or standard input for `-`) as entries. As in SPIRE, an unparsable SPIFFE ID,
/// parent ID or federated trust domain fails the whole file before anything is sent; what only the server
/// can judge (e.g. an ID outside its trust domain) fails that entry alone.
fn parse_data(path: &str) -> Result<Vec<tpb::Entry>, CliError> {
    let bytes = if path == "-" {
        let mut buf = vec![];
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(path).map_err(|e| CliError::Invalid(format!("-data {path}: {e}")))?
    };
    let file: FileEntries = serde_json::from_slice(&bytes)
        .map_err(|e| CliError::Invalid(format!("-data {path}: not a registration entries JSON file: {e}")))?;
    file.entries.into_iter().map(file_entry).collect()
}

fn file_entry(e: FileEntry) -> Result<tpb::Entry, CliError> {
    let id = |what: &str, v: &str| {
        sigil_core::SpiffeId::new(v).map(|i| i.to_string()).map_err(|err| CliError::Invalid(format!("{what}: {err}")))
    };
    let spiffe_id = id("invalid SPIFFE ID", &e.spiffe_id)?;
    let parent_id = id("invalid parent ID", &e.parent_id)?;
    let federates_with = e
        .federates_with
        .iter()
        .map(|td| {
            TrustDomain::new(td.trim_start_matches("spiffe://"))
                .map(|t| t.name().to_owned())
                .map_err(|err| CliError::Invalid(format!("invalid federated trust domain: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tpb::Entry {
        id: e.entry_id,
        spiffe_id,
        parent_id,
        selectors: e.selectors.into_iter().map(|s| tpb::Selector { r#type: s.r#type, value: s.value }).collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        dns_names: e.dns_names,
        federates_with,
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint,
        expires_at: e.entry_expiry,
        revision: e.revision_number,
        created_at: e.created_at,
        store_svid: e.store_svid,
    })
}

/// The single-entry flags given along with `-data` (SPIRE silently ignores them; Sigil refuses).
fn flags_beside_data(entry_id: Option<&String>, f: &EntryFields) -> Option<&'static str> {
    [
        ("-entryID", entry_id.is_some()),
        ("-parentID", f.parent_id.is_some()),
        ("-spiffeID", f.spiffe_id.is_some()),
        ("-selector", !f.selectors.is_empty()),
        ("-x509SVIDTTL", f.x509_svid_ttl.is_some()),
        ("-ttl", f.ttl.is_some()),
        ("-jwtSVIDTTL", f.jwt_svid_ttl.is_some()),
        ("-dns", !f.dns.is_empty()),
        ("-federatesWith", !f.federates_with.is_empty()),
        ("-admin", f.admin),
        ("-downstream", f.downstream),
        ("-storeSVID", f.store_svid),
        ("-node", f.node),
        ("-hint", f.hint.is_some()),
        ("-entryExpiry", f.entry_expiry.is_some()),
    ]
    .into_iter()
    .find_map(|(flag, set)| set.then_some(flag))
}

fn check_data_alone(data: Option<&String>, entry_id: Option<&String>, f: &EntryFields) -> Result<(), CliError> {
    match (data, flags_beside_data(entry_id, f)) {
        (Some(_), Some(flag)) => Err(CliError::Invalid(format!(
            "-data cannot be combined with {flag}: the entries come from the file (SPIRE would ignore {flag})"
        ))),
        _ => Ok(()),
    }
}

/// SPIRE's output of a batch create/update: successes on stdout; per failure, SPIRE's block on stderr
/// showing the entry as sent; exit 1 when any failed. JSON: the whole response, exit 0 (as SPIRE).
fn print_batch(
    out: &mut impl Write,
    verb: &str,
    sent: Vec<tpb::Entry>,
    results: Vec<(Option<pb::Status>, Option<tpb::Entry>)>,
    output: Output,
) -> Result<(), CliError> {
    if results.len() != sent.len() {
        return Err(CliError::Rpc(format!("server returned {} results for {} entries", results.len(), sent.len())));
    }
    // As SPIRE's CLI: a failed item shows the entry from the request.
    let shown: Vec<(Option<pb::Status>, tpb::Entry)> = results
        .into_iter()
        .zip(sent)
        .map(|((st, got), sent)| {
            let ok = st.as_ref().is_none_or(|s| s.code == 0);
            (st, if ok { got.unwrap_or_default() } else { sent })
        })
        .collect();
    if output == Output::Json {
        print_json(out, &entry_results_json(&shown))?;
        return Ok(());
    }
    let failed = |st: &Option<pb::Status>| st.as_ref().is_some_and(|s| s.code != 0);
    for (_, e) in shown.iter().filter(|(st, _)| !failed(st)) {
        print_entry(out, e)?;
    }
    let mut err = std::io::stderr().lock();
    let mut any_failed = false;
    for (st, e) in shown.iter().filter(|(st, _)| failed(st)) {
        any_failed = true;
        let st = st.clone().unwrap_or_default();
        writeln!(
            err,
            "Failed to {verb} the following entry (code: {}, msg: {:?}):",
            go_code_name(tonic::Code::from_i32(st.code)),
            st.message
        )?;
        print_entry(&mut err, e)?;
    }
    if any_failed {
        return Err(CliError::Rpc(format!("failed to {verb} one or more entries")));
    }
    Ok(())
}

/// grpc-go's `codes.Code.String()`.
fn go_code_name(c: tonic::Code) -> String {
    match c {
        tonic::Code::Ok => "OK".into(),
        tonic::Code::Cancelled => "Canceled".into(),
        other => format!("{other:?}"),
    }
}

pub(super) async fn run_entry(cmd: EntryCmd, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        EntryCmd::Create { socket, entry_id, data, mut fields, output } => {
            check_data_alone(data.as_ref(), entry_id.as_ref(), &fields)?;
            fold_ttl_alias_noting(&mut fields)?;
            let entries = match &data {
                Some(path) => parse_data(path)?,
                None => {
                    let mut entry = entry_from_fields(&fields, None)?;
                    if let Some(id) = entry_id {
                        convert::entry_id("-entryID", &id).map_err(|s| CliError::Invalid(s.message().to_owned()))?;
                        if id.is_empty() {
                            return Err(CliError::Invalid("-entryID: must not be empty".into()));
                        }
                        entry.id = id;
                    }
                    vec![entry]
                }
            };
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = EntriesClient::new(ch)
                .batch_create_entry(pb::BatchCreateEntryRequest { entries: entries.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            let results = resp.results.into_iter().map(|r| (r.status, r.entry)).collect();
            print_batch(out, "create", entries, results, output)
        }
        EntryCmd::Update { socket, entry_id, data, mut fields, output } => {
            check_data_alone(data.as_ref(), entry_id.as_ref(), &fields)?;
            fold_ttl_alias_noting(&mut fields)?;
            let entries = match &data {
                Some(path) => parse_data(path)?,
                None => {
                    let id = entry_id.ok_or_else(|| CliError::Invalid("-entryID is required (or -data)".into()))?;
                    let mut entry = entry_from_fields(&fields, None)?;
                    entry.id = id;
                    vec![entry]
                }
            };
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = EntriesClient::new(ch)
                .batch_update_entry(pb::BatchUpdateEntryRequest { entries: entries.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            let results = resp.results.into_iter().map(|r| (r.status, r.entry)).collect();
            print_batch(out, "update", entries, results, output)
        }
        EntryCmd::Show { socket, filter, output } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let mut client = EntriesClient::new(ch);
            let entries = if let Some(id) = &filter.entry_id {
                vec![client.get_entry(pb::GetEntryRequest { id: id.clone() }).await.map_err(rpc)?.into_inner()]
            } else {
                let f = filter_from_args(&filter)?;
                all_pages(async |page_token| {
                    let page = client
                        .list_entries(pb::ListEntriesRequest { filter: Some(f.clone()), page_size: 500, page_token })
                        .await
                        .map_err(rpc)?
                        .into_inner();
                    Ok((page.entries, page.next_page_token))
                })
                .await?
            };
            match output {
                Output::Json => print_json(out, &entries_json(&entries))?,
                Output::Pretty => {
                    writeln!(out, "Found {} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" })?;
                    for e in &entries {
                        print_entry(out, e)?;
                    }
                }
            }
            Ok(())
        }
        EntryCmd::Delete { socket, entry_id, output } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = EntriesClient::new(ch)
                .batch_delete_entry(pb::BatchDeleteEntryRequest { ids: vec![entry_id.clone()] })
                .await
                .map_err(rpc)?
                .into_inner();
            if output == Output::Json {
                // SPIRE's BatchDeleteEntryResponse: `{"results":[{"status":...,"id":...}]}`.
                let results = resp
                    .results
                    .iter()
                    .map(|r| serde_json::json!({ "status": super::output::status_json(r.status.as_ref()), "id": r.id }))
                    .collect::<Vec<_>>();
                print_json(out, &serde_json::json!({ "results": results }))?;
                return Ok(());
            }
            let r = resp.results.into_iter().next().ok_or_else(|| CliError::Rpc("empty response".into()))?;
            let st = r.status.unwrap_or_default();
            if st.code != 0 {
                return Err(CliError::Rpc(format!("{}: {}", code_name(tonic::Code::from_i32(st.code)), st.message)));
            }
            writeln!(out, "Deleted entry with ID: {entry_id}")?;
            Ok(())
        }
        EntryCmd::Count { socket, filter } => {
            let f = filter_from_args(&filter)?;
            let ch = admin_channel(&socket.socket_path).await?;
            let n = EntriesClient::new(ch)
                .count_entries(pb::CountEntriesRequest { filter: Some(f) })
                .await
                .map_err(rpc)?
                .into_inner()
                .count;
            writeln!(out, "{n} registration entr{}", if n == 1 { "y" } else { "ies" })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (-ttl, -x509SVIDTTL, Ok((X509-SVID TTL, deprecation noted)) or Err(start of the message)).
    type Case = (Option<i32>, Option<i32>, Result<(Option<i32>, bool), &'static str>);

    #[test]
    fn ttl_alias_folds_into_x509_svid_ttl() {
        let cases: &[Case] = &[
            (None, None, Ok((None, false))),
            (None, Some(60), Ok((Some(60), false))),
            (Some(3600), None, Ok((Some(3600), true))),
            (Some(3600), Some(60), Err("-ttl and -x509SVIDTTL are the same setting")),
        ];
        for (ttl, x509, want) in cases {
            let mut f = EntryFields { ttl: *ttl, x509_svid_ttl: *x509, ..EntryFields::default() };
            match (fold_ttl_alias(&mut f), want) {
                (Ok(noted), Ok((x, n))) => {
                    assert_eq!((f.x509_svid_ttl, noted), (*x, *n), "ttl={ttl:?} x509={x509:?}");
                    assert_eq!(f.ttl, None);
                }
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{e}"),
                (got, want) => panic!("ttl={ttl:?} x509={x509:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ttl_alias_counts_as_a_flag_beside_data() {
        let f = EntryFields { ttl: Some(60), ..EntryFields::default() };
        assert_eq!(flags_beside_data(None, &f), Some("-ttl"));
    }
}
