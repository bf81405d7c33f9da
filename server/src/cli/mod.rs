//! The `sigil-server` command line: `run` plus SPIRE-style admin subcommands over the admin socket.
//!
//! Every failure ends as one line on stderr and exit code 1 (see `main.rs`).

pub mod args;
mod entry;
mod federation;
mod output;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use args::{AgentCmd, BundleCmd, BundleDeleteModeArg, BundleFormat, Command, JwtCmd, Output, TokenCmd, X509Cmd};
use hyper_util::rt::TokioIo;
use sigil_core::bundle::Bundle;
use sigil_core::{Selector, SpiffeId, TrustDomain};
use sigil_proto::admin::{
    self as pb, agents_client::AgentsClient, bundles_client::BundlesClient, svids_client::SvidsClient,
};
use sigil_proto::types as tpb;
use tonic::transport::{Channel, Endpoint};

use crate::api::convert;

/// A CLI failure: printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot reach the server at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("{0}")]
    Rpc(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn rpc(s: tonic::Status) -> CliError {
    CliError::Rpc(format!("{}: {}", code_name(s.code()), s.message()))
}

/// Every item of a paged List call: `page(token)` returns one page's items and the next page's token, empty
/// after the last page.
async fn all_pages<T>(
    mut page: impl AsyncFnMut(String) -> Result<(Vec<T>, String), CliError>,
) -> Result<Vec<T>, CliError> {
    let mut all = vec![];
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        Unauthenticated => "unauthenticated",
        Unavailable => "unavailable",
        _ => "error",
    }
}

/// A channel to the admin socket.
pub async fn admin_channel(path: &Path) -> Result<Channel, CliError> {
    let shown = path.display().to_string();
    let path = path.to_owned();
    let endpoint = Endpoint::from_static("http://sigil-admin");
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| CliError::Connect { path: shown, reason: source_chain(&e) })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = format!("{msg}: {s}");
        cur = s.source();
    }
    msg
}

fn parse_id(flag: &str, v: &str) -> Result<SpiffeId, CliError> {
    SpiffeId::new(v).map_err(|e| CliError::Invalid(format!("-{flag}: {e}")))
}

fn parse_selector(v: &str) -> Result<tpb::Selector, CliError> {
    let s = Selector::parse(v).map_err(|e| CliError::Invalid(format!("-selector: {e}")))?;
    Ok(convert::selector_to_pb(&s))
}

fn print_agent(out: &mut impl Write, a: &tpb::Agent) -> std::io::Result<()> {
    writeln!(out, "SPIFFE ID         : {}", a.id)?;
    writeln!(out, "Attestation type  : {}", a.attestation_type)?;
    writeln!(out, "Expiration time   : {}", a.x509_svid_expires_at)?;
    writeln!(out, "Serial number     : {}", a.x509_svid_serial_number)?;
    writeln!(out, "Banned            : {}", a.banned)?;
    for s in &a.selectors {
        writeln!(out, "Selector          : {}:{}", s.r#type, s.value)?;
    }
    writeln!(out)
}

fn bundle_core(b: &tpb::Bundle) -> Result<Bundle, CliError> {
    convert::bundle_from_pb(b).map_err(|s| CliError::Rpc(s.message().to_owned()))
}

fn render_bundle(b: &tpb::Bundle, format: BundleFormat) -> Result<String, CliError> {
    let b = bundle_core(b)?;
    Ok(match format {
        BundleFormat::Pem => b.to_pem(),
        BundleFormat::Spiffe => b.to_jwks_json(),
    })
}

fn first_status_error(code: i32, message: &str) -> Result<(), CliError> {
    if code == 0 {
        Ok(())
    } else {
        Err(CliError::Rpc(format!("{}: {message}", code_name(tonic::Code::from_i32(code)))))
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    Ok(())
}

fn pem_certs(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone()))).collect()
}

/// Runs one admin subcommand, writing to `out`.
pub async fn run_admin(cmd: Command, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        Command::Run(_) => Err(CliError::Invalid("run is handled by main".into())),
        Command::Healthcheck { socket, verbose, .. } => {
            let ch = admin_channel(&socket.socket_path)
                .await
                .map_err(|e| CliError::Rpc(format!("Server is unhealthy: {e}")))?;
            BundlesClient::new(ch)
                .get_bundle(pb::GetBundleRequest {})
                .await
                .map_err(|s| CliError::Rpc(format!("Server is unhealthy: {}", s.message())))?;
            if verbose {
                writeln!(out, "Admin socket {} answered.", socket.socket_path.display())?;
            }
            writeln!(out, "Server is healthy.")?;
            Ok(())
        }
        Command::Token(TokenCmd::Generate { socket, spiffe_id, ttl }) => {
            if ttl < 0 {
                return Err(CliError::Invalid("-ttl: must not be negative".into()));
            }
            let alias = spiffe_id.as_deref().map(|v| parse_id("spiffeID", v)).transpose()?;
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = AgentsClient::new(ch)
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl,
                    agent_alias_spiffe_id: alias.map(|a| a.to_string()).unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            writeln!(out, "Token: {}", resp.token)?;
            Ok(())
        }
        Command::Entry(cmd) => entry::run_entry(cmd, out).await,
        Command::Bundle(cmd) => run_bundle(cmd, out).await,
        Command::Agent(cmd) => run_agent(cmd, out).await,
        Command::Federation(cmd) => federation::run_federation(cmd, out).await,
        Command::X509(X509Cmd::Mint { socket, spiffe_id, ttl, dns, write }) => {
            let id = parse_id("spiffeID", &spiffe_id)?;
            if ttl < 0 {
                return Err(CliError::Invalid("-ttl: must not be negative".into()));
            }
            let key = rcgen::KeyPair::generate().map_err(|e| CliError::Invalid(format!("key generation: {e}")))?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .map_err(|e| CliError::Invalid(format!("CSR: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            let svid = SvidsClient::new(ch.clone())
                .mint_x509_svid(pb::MintX509SvidRequest {
                    csr: csr.der().to_vec(),
                    spiffe_id: id.to_string(),
                    dns_names: dns,
                    ttl,
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .svid
                .ok_or_else(|| CliError::Rpc("server returned no SVID".into()))?;
            let bundle = BundlesClient::new(ch).get_bundle(pb::GetBundleRequest {}).await.map_err(rpc)?.into_inner();
            let svid_pem = pem_certs(&svid.cert_chain);
            let key_pem = key.serialize_pem();
            let bundle_pem = render_bundle(&bundle, BundleFormat::Pem)?;
            match write {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(dir.join("svid.pem"), &svid_pem)?;
                    write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
                    std::fs::write(dir.join("bundle.pem"), &bundle_pem)?;
                    writeln!(out, "X509-SVID written to {}", dir.join("svid.pem").display())?;
                    writeln!(out, "Private key written to {}", dir.join("key.pem").display())?;
                    writeln!(out, "Root CAs written to {}", dir.join("bundle.pem").display())?;
                }
                None => {
                    writeln!(out, "X509-SVID:\n{svid_pem}")?;
                    writeln!(out, "Private key:\n{key_pem}")?;
                    writeln!(out, "Root CAs:\n{bundle_pem}")?;
                }
            }
            Ok(())
        }
        Command::Jwt(JwtCmd::Mint { socket, spiffe_id, audience, ttl, write }) => {
            let id = parse_id("spiffeID", &spiffe_id)?;
            if ttl < 0 {
                return Err(CliError::Invalid("-ttl: must not be negative".into()));
            }
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = SvidsClient::new(ch)
                .mint_jwt_svid(pb::MintJwtSvidRequest { spiffe_id: id.to_string(), audience, ttl })
                .await
                .map_err(rpc)?
                .into_inner();
            match write {
                Some(path) => {
                    write_private(&path, resp.token.as_bytes())?;
                    writeln!(out, "JWT-SVID written to {}", path.display())?;
                }
                None => writeln!(out, "{}", resp.token)?,
            }
            Ok(())
        }
    }
}

async fn run_bundle(cmd: BundleCmd, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        BundleCmd::Show { socket, format, output } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let b = BundlesClient::new(ch).get_bundle(pb::GetBundleRequest {}).await.map_err(rpc)?.into_inner();
            if output == Output::Json {
                // SPIRE: protojson of the Bundle; -format applies to pretty output only.
                output::print_json(out, &output::bundle_json(&b))?;
                return Ok(());
            }
            write!(out, "{}", render_bundle(&b, format)?)?;
            if format == BundleFormat::Spiffe {
                writeln!(out)?;
            }
            Ok(())
        }
        BundleCmd::Count { socket } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let federated = BundlesClient::new(ch)
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .bundles
                .len();
            // The server's own bundle always exists; SPIRE's CountBundles counts it too.
            let n = federated + 1;
            writeln!(out, "{n} {}", if n == 1 { "bundle" } else { "bundles" })?;
            Ok(())
        }
        BundleCmd::List { socket, id, format, output } => {
            let want = id
                .as_deref()
                .map(|v| TrustDomain::new(v).map_err(|e| CliError::Invalid(format!("-id: {e}"))))
                .transpose()?;
            let ch = admin_channel(&socket.socket_path).await?;
            let list = BundlesClient::new(ch)
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if output == Output::Json {
                // SPIRE: with -id, GetFederatedBundle's Bundle; without, ListFederatedBundlesResponse.
                let doc = match &want {
                    Some(w) => {
                        let b = list
                            .bundles
                            .iter()
                            .find(|b| b.trust_domain == w.name())
                            .ok_or_else(|| CliError::Rpc(format!("not found: no federated bundle for {w}")))?;
                        output::bundle_json(b)
                    }
                    None => serde_json::json!({
                        "bundles": list.bundles.iter().map(output::bundle_json).collect::<Vec<_>>(),
                        "next_page_token": "",
                    }),
                };
                output::print_json(out, &doc)?;
                return Ok(());
            }
            let mut shown = 0;
            for b in &list.bundles {
                if want.as_ref().is_some_and(|w| w.name() != b.trust_domain) {
                    continue;
                }
                shown += 1;
                writeln!(out, "****************************************")?;
                writeln!(out, "* spiffe://{}", b.trust_domain)?;
                writeln!(out, "****************************************")?;
                write!(out, "{}", render_bundle(b, format)?)?;
                writeln!(out)?;
            }
            if let (Some(w), 0) = (want, shown) {
                return Err(CliError::Rpc(format!("not found: no federated bundle for {w}")));
            }
            Ok(())
        }
        BundleCmd::Set { socket, id, path, format } => {
            let td = TrustDomain::new(&id).map_err(|e| CliError::Invalid(format!("-id: {e}")))?;
            let data = match &path {
                Some(p) => std::fs::read(p).map_err(|e| CliError::Invalid(format!("-path {}: {e}", p.display())))?,
                None => {
                    let mut buf = vec![];
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let bundle = match format {
                BundleFormat::Pem => Bundle::from_pem(td, &data),
                BundleFormat::Spiffe => Bundle::from_jwks_json(td, &data),
            }
            .map_err(|e| CliError::Invalid(format!("bundle data: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            BundlesClient::new(ch)
                .set_federated_bundle(pb::SetFederatedBundleRequest { bundle: Some(convert::bundle_to_pb(&bundle)) })
                .await
                .map_err(rpc)?;
            writeln!(out, "bundle set.")?;
            Ok(())
        }
        BundleCmd::Delete { socket, id, mode } => {
            let td = TrustDomain::new(&id).map_err(|e| CliError::Invalid(format!("-id: {e}")))?;
            let mode = match mode {
                BundleDeleteModeArg::Restrict => pb::delete_federated_bundle_request::Mode::Restrict,
                BundleDeleteModeArg::Dissociate => pb::delete_federated_bundle_request::Mode::Dissociate,
                BundleDeleteModeArg::Delete => pb::delete_federated_bundle_request::Mode::Delete,
            };
            let ch = admin_channel(&socket.socket_path).await?;
            BundlesClient::new(ch)
                .delete_federated_bundle(pb::DeleteFederatedBundleRequest {
                    trust_domain: td.name().to_owned(),
                    mode: mode.into(),
                })
                .await
                .map_err(rpc)?;
            writeln!(out, "bundle deleted.")?;
            Ok(())
        }
    }
}

async fn run_agent(cmd: AgentCmd, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        AgentCmd::List { socket, output } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let agents =
                AgentsClient::new(ch).list_agents(pb::ListAgentsRequest {}).await.map_err(rpc)?.into_inner().agents;
            match output {
                Output::Json => output::print_json(
                    out,
                    &serde_json::json!({
                        "agents": agents.iter().map(output::agent_json).collect::<Vec<_>>(),
                        "next_page_token": "",
                    }),
                )?,
                Output::Pretty => {
                    writeln!(
                        out,
                        "Found {} attested agent{}:\n",
                        agents.len(),
                        if agents.len() == 1 { "" } else { "s" }
                    )?;
                    for a in &agents {
                        print_agent(out, a)?;
                    }
                }
            }
            Ok(())
        }
        AgentCmd::Show { socket, spiffe_id, output } => {
            let id = parse_id("spiffeID", &spiffe_id)?;
            let ch = admin_channel(&socket.socket_path).await?;
            let a = AgentsClient::new(ch)
                .get_agent(pb::GetAgentRequest { id: id.to_string() })
                .await
                .map_err(rpc)?
                .into_inner();
            match output {
                Output::Json => output::print_json(out, &output::agent_json(&a))?,
                Output::Pretty => print_agent(out, &a)?,
            }
            Ok(())
        }
        AgentCmd::Evict { socket, spiffe_id } => {
            let id = parse_id("spiffeID", &spiffe_id)?;
            let ch = admin_channel(&socket.socket_path).await?;
            AgentsClient::new(ch).delete_agent(pb::DeleteAgentRequest { id: id.to_string() }).await.map_err(rpc)?;
            writeln!(out, "Agent evicted successfully")?;
            Ok(())
        }
        AgentCmd::Ban { socket, spiffe_id } => {
            let id = parse_id("spiffeID", &spiffe_id)?;
            let ch = admin_channel(&socket.socket_path).await?;
            AgentsClient::new(ch).ban_agent(pb::BanAgentRequest { id: id.to_string() }).await.map_err(rpc)?;
            writeln!(out, "Agent banned successfully")?;
            Ok(())
        }
    }
}
