//! Bundle notifiers: plugins told about every change of the server's own trust bundle (SPIRE's
//! `Notifier` plugins). One is implemented, `k8sbundle` ([`k8sbundle`]): it keeps a Kubernetes ConfigMap
//! key holding the bundle's X.509 authorities as PEM, which agents mount as their bootstrap bundle.
//!
//! This module is the I/O-free part: what to write ([`render_pem`]), whether to write ([`needs_write`]),
//! how long to wait after a failure ([`Backoff`]) and when a failure is worth an error line
//! ([`FailureLog`]). [`k8sbundle`] does the Kubernetes calls.

pub mod k8sbundle;

use std::time::Duration;

use sigil_core::bundle::Bundle;

/// First wait after a failed write.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a bundle change is left to settle before it is written, so a burst of changes (a prepared
/// CA and a JWT key published one after the other) becomes one write.
pub const SETTLE: Duration = Duration::from_millis(250);
/// How often the ConfigMap is read again while nothing changed, to repair data lost outside the server.
pub const RESYNC: Duration = Duration::from_secs(60);

/// What the ConfigMap key holds for `bundle`: every X.509 authority (root CA certificate) as a PEM
/// `CERTIFICATE` block, in the bundle's order; exactly what `sigil-server bundle show` prints. JWT
/// authorities are not part of it (as in SPIRE: the key is the agents' X.509 bootstrap bundle).
pub fn render_pem(bundle: &Bundle) -> String {
    bundle.to_pem()
}

/// Whether the key must be written: the ConfigMap's current value of the key (`None`: the key is absent)
/// differs from the PEM to publish. An identical value is left alone, so a restart writes nothing.
pub fn needs_write(current: Option<&str>, want: &str) -> bool {
    current != Some(want)
}

/// Waits between attempts after failures: 1 s, doubling, at most 30 s; back to 1 s after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_START }
    }
}

impl Backoff {
    /// The wait before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// Keeps a failing notifier from repeating the same error line every 30 s forever: a failure is logged
/// at error level when it differs from the previous one (the first, or another cause), later repeats at
/// debug; a success after failures is logged once, with how many attempts failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureLog {
    last: Option<String>,
    failures: u64,
}

/// How to log an event, as decided by [`FailureLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAs {
    Error,
    Debug,
    /// A success after `n` failed attempts.
    Recovered(u64),
    /// A success, nothing failed before it.
    Quiet,
}

impl FailureLog {
    pub fn failed(&mut self, message: &str) -> LogAs {
        self.failures += 1;
        if self.last.as_deref() == Some(message) {
            return LogAs::Debug;
        }
        self.last = Some(message.to_owned());
        LogAs::Error
    }

    pub fn succeeded(&mut self) -> LogAs {
        let failures = std::mem::take(&mut self.failures);
        self.last = None;
        if failures == 0 { LogAs::Quiet } else { LogAs::Recovered(failures) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_core::TrustDomain;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn pem_holds_every_x509_authority_in_bundle_order_and_nothing_else() {
        let (a, b) = (cert("a"), cert("b"));
        let td = TrustDomain::new("example.org").unwrap();
        let bundle = |cas: Vec<Vec<u8>>| Bundle {
            x509_authorities: cas,
            jwt_authorities: vec![sigil_core::bundle::JwtAuthority {
                key_id: "k".into(),
                public_key_spki_der: vec![1, 2, 3],
                expires_at: 0,
            }],
            sequence: 7,
            ..Bundle::new(td.clone())
        };
        type Case<'a> = (Vec<Vec<u8>>, Vec<&'a Vec<u8>>);
        let cases: &[Case<'_>] = &[
            (vec![], vec![]),
            (vec![a.clone()], vec![&a]),
            (vec![a.clone(), b.clone()], vec![&a, &b]),
            (vec![b.clone(), a.clone()], vec![&b, &a]),
        ];
        for (cas, want) in cases {
            let text = render_pem(&bundle(cas.clone()));
            let blocks = pem::parse_many(&text).unwrap();
            assert!(blocks.iter().all(|p| p.tag() == "CERTIFICATE"), "{text}");
            let got: Vec<&[u8]> = blocks.iter().map(|p| p.contents()).collect();
            let want: Vec<&[u8]> = want.iter().map(|d| d.as_slice()).collect();
            assert_eq!(got, want);
            assert_eq!(text, bundle(cas.clone()).to_pem(), "what `bundle show` prints");
        }
    }

    #[test]
    fn writes_only_what_differs() {
        let table: &[(Option<&str>, &str, bool)] = &[
            (None, "PEM", true),
            (Some(""), "PEM", true),
            (Some("OLD"), "PEM", true),
            (Some("PEM\n"), "PEM", true),
            (Some("PEM"), "PEM", false),
            (Some(""), "", false),
        ];
        for (current, want, write) in table {
            assert_eq!(needs_write(*current, want), *write, "{current:?} -> {want:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_1s_to_30s_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn repeated_failures_log_one_error_per_cause() {
        let mut log = FailureLog::default();
        let steps: &[(Option<&str>, LogAs)] = &[
            (None, LogAs::Quiet),
            (Some("missing"), LogAs::Error),
            (Some("missing"), LogAs::Debug),
            (Some("missing"), LogAs::Debug),
            (Some("forbidden"), LogAs::Error),
            (Some("missing"), LogAs::Error),
            (None, LogAs::Recovered(5)),
            (None, LogAs::Quiet),
            (Some("missing"), LogAs::Error),
        ];
        for (i, (failure, want)) in steps.iter().enumerate() {
            let got = match failure {
                Some(m) => log.failed(m),
                None => log.succeeded(),
            };
            assert_eq!(got, *want, "step {i}");
        }
    }
}
