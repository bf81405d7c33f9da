//! Issue 13, acceptance 3: with a 30 s X509-SVID TTL, `/spiffe/demo/rotation` shows at least 3 rotations
//! and each new SVID arrived before the previous one expired (checked here from the JSON's own times too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn unix(rfc3339: &Value) -> i64 {
    time::OffsetDateTime::parse(rfc3339.as_str().unwrap(), &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

#[test]
fn rotation_with_a_30s_ttl_shows_3_rotations_without_a_gap() {
    let s = stack(&["-x509SVIDTTL", "30"]);
    let a = serve(&s, UID_A, free_port(), None);
    wait_ready(a.http, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(110);
    let v = loop {
        let (st, v) = get_json(a.http, "/spiffe/demo/rotation");
        assert_eq!(st, 200, "{v}");
        if v["rotations"].as_u64().unwrap() >= 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "fewer than 3 rotations in 110 s: {v}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!((v["no_gap"].as_bool(), v["gaps"].as_array().map(Vec::len)), (Some(true), Some(0)), "{v}");
    let svids = v["svids"].as_array().unwrap();
    assert!(svids.len() >= 4, "{v}");
    for sv in svids {
        assert_eq!(sv["spiffe_id"], ID_A);
        let life = unix(&sv["not_after"]) - unix(&sv["not_before"]);
        assert!(life <= 30 + 60, "a 30 s TTL (plus the CA's backdating): {life} s: {sv}");
    }
    for w in svids.windows(2) {
        assert_ne!(w[0]["serial"], w[1]["serial"]);
        assert!(unix(&w[1]["received_at"]) < unix(&w[0]["not_after"]), "gap: {} then {}", w[0], w[1]);
    }
    // /spiffe/status reports the last rotation.
    let (_, st) = get_json(a.http, "/spiffe/status");
    assert!(st["rotations"].as_u64().unwrap() >= 3 && st["last_rotation"].is_string(), "{st}");
}
