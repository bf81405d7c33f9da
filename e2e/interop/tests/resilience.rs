//! Issue 3, acceptance 4: kill -9 the server, the agent keeps serving cached SVIDs and reconnects unaided
//! when the server is back; kill -9 the agent, it serves again after a restart without a new join token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

fn fetched_ids(s: &Stack) -> Option<Vec<String>> {
    let o = s.agent_cli(&["api", "fetch", "x509", "-output", "json"]);
    if !o.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    let mut ids: Vec<String> =
        v["svids"].as_array()?.iter().filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned)).collect();
    ids.sort();
    Some(ids)
}

#[test]
fn server_and_agent_survive_sigkill() {
    let mut s = stack(None);
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(fetched_ids(&s).unwrap(), vec![format!("spiffe://{TD}/workload")]);

    s.kill_server();
    // Cached SVIDs keep being served while the server is down.
    for _ in 0..5 {
        assert_eq!(fetched_ids(&s).unwrap(), vec![format!("spiffe://{TD}/workload")]);
        std::thread::sleep(Duration::from_millis(500));
    }
    s.start_server();
    s.register("/workload2", uid, None);
    wait_for("the new entry to reach the workload after the server restart", Duration::from_secs(60), || {
        fetched_ids(&s).is_some_and(|ids| ids.len() == 2)
    });
    assert_eq!(fetched_ids(&s).unwrap(), vec![format!("spiffe://{TD}/workload"), format!("spiffe://{TD}/workload2")]);

    s.kill_agent();
    assert!(fetched_ids(&s).is_none(), "nothing serves while the agent is down");
    s.start_agent(None); // no join token: it must resume with its stored SVID
    wait_for("the restarted agent to serve again", Duration::from_secs(60), || {
        fetched_ids(&s).is_some_and(|ids| ids.len() == 2)
    });
    // Same agent identity as before the kill: it resumed, it did not attest anew.
    assert_eq!(s.server_cli(&["agent", "list", "-output", "json"]).status.code(), Some(0));
    let agents: serde_json::Value =
        serde_json::from_slice(&s.server_cli(&["agent", "list", "-output", "json"]).stdout).unwrap();
    let agents = &agents["agents"];
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    let id = &agents[0]["id"];
    let shown = format!("spiffe://{}{}", id["trust_domain"].as_str().unwrap(), id["path"].as_str().unwrap());
    assert_eq!(shown, s.agent_id.as_str());
}
