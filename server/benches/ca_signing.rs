//! `cargo bench -p sigil-server --bench ca_signing`: where the time of one X509-SVID goes, single thread.
//! Raw P-256 sign and verify (ring), CSR parse + signature check, and the whole `sign_x509_svid_csr`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use sigil_core::{SpiffeId, TrustDomain};
use sigil_server::ca::{CaConfig, CaManager};

fn rate(name: &str, dur: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f();
        n += 1;
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    println!("{name:<48} {r:>10.0} /s  ({:.1} us each)", 1e6 / r);
    r
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let d = Duration::from_secs(2);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 300];
    let sig = key.sign(&rng, &msg).unwrap();
    let raw_sign = rate("raw P-256 sign (ring)", d, || {
        std::hint::black_box(key.sign(&rng, &msg).unwrap());
    });
    let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    rate("raw P-256 verify (ring)", d, || pk.verify(&msg, sig.as_ref()).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (ca, _) = CaManager::load_or_init(dir.path(), CaConfig::new(td), None, now).unwrap();
    let csr_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&csr_key).unwrap().der().to_vec();
    let id = SpiffeId::new("spiffe://example.org/bench/workload").unwrap();
    let full = rate("sign_x509_svid_csr (verify CSR + issue leaf)", d, || {
        std::hint::black_box(ca.sign_x509_svid_csr(&csr, &id, &[], None, now).unwrap());
    });
    println!("issuance / raw sign: {:.1}%", 100.0 * full / raw_sign);

    // The same CaManager shared by every core, as the agent API's batch workers share it.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ca = std::sync::Arc::new(ca);
    let start = Instant::now();
    let per_thread: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                let (ca, csr, id) = (ca.clone(), csr.clone(), id.clone());
                scope.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < d {
                        std::hint::black_box(ca.sign_x509_svid_csr(&csr, &id, &[], None, now).unwrap());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = per_thread.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64();
    println!(
        "sign_x509_svid_csr on {cores} threads, shared CA {all:>13.0} /s  ({:.1}% of 1-thread raw sign)",
        100.0 * all / raw_sign
    );
}
