//! `/proc/<pid>/cgroup` -> the pod UID and container ID of a process (SPIRE's
//! `pkg/common/containerinfo/extract.go`, without regexes).
//!
//! Each line is `hierarchy-id:controllers:path`, split on the first two colons only: the path itself may
//! hold colons (containerd's systemd form `...slice:cri-containerd:<id>`). In every path the container ID
//! is the last word-bounded run of exactly 64 hex digits (the leaf cgroup is where the process lives, and
//! a kind node's own container ID comes earlier in the path); the pod UID is `pod` + a UUID written with
//! `-` or `_` (systemd escapes `-` as `_` in slice names), found before the container ID.
//!
//! Word-bounded means what RE2's `\b` means: the characters either side are not ASCII letters, digits or
//! `_` (or are the ends of the path). So `docker-<id>.scope`, `crio-<id>.scope`, `cri-containerd-<id>.scope`,
//! `:cri-containerd:<id>` and a plain `/<id>` segment all match, while a 65-digit run or `<id>_x` does not.
//!
//! Unlike SPIRE, a path counts only if it lies in the kubelet's pod hierarchy (`kubepods...`,
//! `kubelet...`): cgroups can be created, and named, by whoever has a delegated subtree; see
//! `under_kubelet_hierarchy`.

/// What the cgroup file says about a process running in a Kubernetes container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The pod UID with `-` separators; `None` when the cgroup path does not name the pod (cri-o with
    /// kubeedge, static pods whose UID is a 32-hex hash): the caller then searches every pod.
    pub pod_uid: Option<String>,
    /// The 64-hex container ID as the runtime reports it (`containerd://<id>` in the pod status).
    pub container_id: String,
}

/// Why the cgroup file cannot be attributed to one container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup line {line}: expected `id:controllers:path`")]
    Malformed { line: usize },
    #[error("the cgroup file names two pod UIDs: {0} and {1}")]
    MultiplePodUids(String, String),
    #[error("the cgroup file names two container IDs: {0} and {1}")]
    MultipleContainerIds(String, String),
}

/// Parses the contents of `/proc/<pid>/cgroup`. `Ok(None)`: no line names a container, the process is
/// not in a Kubernetes container (a host process); it gets no `k8s` selectors.
///
/// Across lines, one naming a pod UID beats one that does not (a kind node on a cgroup v1 host has
/// `0::/docker/<node container>/system.slice/containerd.service` beside the workload's
/// `.../pod<uid>/<container>` lines); lines of the same kind must agree, or the process is refused.
pub fn parse_cgroup(content: &str) -> Result<Option<ContainerInfo>, CgroupError> {
    let mut best: Option<ContainerInfo> = None;
    for (n, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CgroupError::Malformed { line: n + 1 });
        };
        let Some(found) = parse_path(path) else { continue };
        best = Some(match best {
            None => found,
            Some(cur) => merge(cur, found)?,
        });
    }
    Ok(best)
}

fn merge(cur: ContainerInfo, new: ContainerInfo) -> Result<ContainerInfo, CgroupError> {
    match (&cur.pod_uid, &new.pod_uid) {
        // A line that names the pod is the more specific one.
        (None, Some(_)) => Ok(new),
        (Some(_), None) => Ok(cur),
        (Some(a), Some(b)) if a != b => Err(CgroupError::MultiplePodUids(a.clone(), b.clone())),
        _ if cur.container_id != new.container_id => {
            Err(CgroupError::MultipleContainerIds(cur.container_id, new.container_id))
        }
        _ => Ok(cur),
    }
}

/// The container (and pod, if named) of one cgroup path; `None` if the path names no container, or if
/// its innermost container cgroup is cri-o's conmon monitor (`crio-conmon-<id>.scope`): conmon runs
/// beside the container, it is not the workload (SPIRE #4088).
pub fn parse_path(path: &str) -> Option<ContainerInfo> {
    let bytes = path.as_bytes();
    let (start, end) = last_container_id(bytes)?;
    if bytes.get(..start).is_some_and(|before| before.ends_with(b"crio-conmon-")) {
        return None;
    }
    let prefix = path.get(..start)?;
    if !under_kubelet_hierarchy(prefix) {
        return None;
    }
    let container_id = path.get(start..end)?.to_owned();
    let pod_uid = last_pod_uid(bytes.get(..start)?);
    Some(ContainerInfo { pod_uid, container_id })
}

/// Whether the part of a cgroup path before the container ID lies in the kubelet's pod hierarchy: its
/// first named segment starts with `kubepods` (cgroupfs `/kubepods/...`, systemd `/kubepods.slice/...`,
/// containerd's `/kubepods-...-pod<uid>.slice:cri-containerd:`) or `kubelet` (kind's cgroup v2
/// `kubelet.slice`/`kubelet-kubepods-...`), after the `..` segments of a reader in its own cgroup namespace
/// and a kind node's own `docker/<id>` cgroup. After `..`, a pod cgroup itself, or nothing, also qualifies
/// (the reader's namespace is rooted in that hierarchy).
///
/// Why: whoever can create cgroups can name them. A non-root user with a delegated systemd subtree
/// (`/user.slice/user-1000.slice/user@1000.service/...` on cgroup v2), or a container with a writable
/// cgroupfs, could make `pod<victim uid>/<victim container id>` and move into it; SPIRE takes the pod and
/// container from anywhere in the path and would hand that process the victim's selectors. The kubelet's
/// hierarchy is created by the kubelet and the runtime, as root; cgroups outside it are not pods'.
fn under_kubelet_hierarchy(prefix: &str) -> bool {
    let named = prefix.split('/').filter(|s| !s.is_empty());
    let relative = named.clone().next() == Some("..");
    let mut segments = named.skip_while(|s| *s == "..").peekable();
    // Seen from a cgroup namespace (the agent's own container's), `..` climbs from the agent's cgroup through
    // its pod's ancestors, which are the kubelet's; a pod cgroup right there is the kubelet's too
    // (`0::/../../pod<uid>/<id>`). A user's subtree shows its own names first (`/../../../user.slice/...`).
    if relative && segments.peek().is_some_and(|s| s.starts_with("pod")) {
        return true;
    }
    if segments.peek() == Some(&"docker") {
        segments.next();
        match segments.next() {
            Some(node) if node.len() == 64 && node.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            _ => return false,
        }
    }
    match segments.next() {
        None => true,
        Some(first) => first.starts_with("kubepods") || first.starts_with("kubelet"),
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The byte range of the last maximal run of word characters that is exactly 64 hex digits.
fn last_container_id(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut end = bytes.len();
    while end > 0 {
        // Skip non-word characters backwards, then take the word ending at `end`.
        while end > 0 && bytes.get(end - 1).is_some_and(|&b| !is_word(b)) {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && bytes.get(start - 1).is_some_and(|&b| is_word(b)) {
            start -= 1;
        }
        let word = bytes.get(start..end)?;
        if word.len() == 64 && word.iter().all(u8::is_ascii_hexdigit) {
            return Some((start, end));
        }
        end = start;
    }
    None
}

/// The last word-bounded `pod<uuid>` in `bytes` (8-4-4-4-12 hex joined by `-` or `_`), with `_` turned
/// into `-`.
fn last_pod_uid(bytes: &[u8]) -> Option<String> {
    const UUID_LEN: usize = 36;
    let mut i = bytes.len().checked_sub(3 + UUID_LEN)?;
    loop {
        if let Some(uid) = pod_uid_at(bytes, i, UUID_LEN) {
            return Some(uid);
        }
        if i == 0 {
            return None;
        }
        i -= 1;
    }
}

fn pod_uid_at(bytes: &[u8], i: usize, uuid_len: usize) -> Option<String> {
    if bytes.get(i..i + 3)? != b"pod" {
        return None;
    }
    if i > 0 && is_word(*bytes.get(i - 1)?) {
        return None;
    }
    let uuid = bytes.get(i + 3..i + 3 + uuid_len)?;
    if bytes.get(i + 3 + uuid_len).is_some_and(|&b| is_word(b)) {
        return None;
    }
    let mut out = String::with_capacity(uuid_len);
    for (k, &b) in uuid.iter().enumerate() {
        if matches!(k, 8 | 13 | 18 | 23) {
            if b != b'-' && b != b'_' {
                return None;
            }
            out.push('-');
        } else if b.is_ascii_hexdigit() {
            out.push(char::from(b));
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const CID2: &str = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6";
    const KIND: &str = "8e2b8a1d0f3c44e0b8c1c3f4a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn info(pod: Option<&str>, cid: &str) -> Option<ContainerInfo> {
        Some(ContainerInfo { pod_uid: pod.map(str::to_owned), container_id: cid.to_owned() })
    }

    #[test]
    fn real_cgroup_lines() {
        let p1 = "2c48913c-b29f-11e7-9350-020968147796";
        let p2 = "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80";
        let p3 = "0599875a-ef2c-4d42-a648-51541e8a0110";
        let p4 = "72f7f152-440c-66ac-9084-e0fc1d8a910c";
        let cases: Vec<(String, Option<ContainerInfo>)> = vec![
            // cgroup v1, cgroupfs driver, docker (SPIRE k8s_posix testdata, cgroups_pid_in_pod.txt).
            (format!("11:hugetlb:/kubepods/burstable/pod{p1}/{CID}"), info(Some(p1), CID)),
            // cgroup v1, systemd driver, docker (SPIRE #1081 / #949 testdata).
            (
                format!(
                    "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{CID}.scope",
                    p1.replace('-', "_")
                ),
                info(Some(p1), CID),
            ),
            // cgroup v1, systemd driver, cri-o: systemd escapes the UID's '-' as '_' (SPIRE #1535).
            (
                format!(
                    "4:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{CID}.scope",
                    p2.replace('-', "_")
                ),
                info(Some(p2), CID),
            ),
            // kind on a cgroup v1 host: the kind node's own container ID comes first (SPIRE #2578, kind).
            (
                format!(
                    "13:name=systemd:/docker/{KIND}/kubepods/besteffort/pod{p2}/{CID}\n0::/docker/{KIND}/system.slice/containerd.service"
                ),
                info(Some(p2), CID),
            ),
            // cgroup v2, systemd driver, containerd as kind shows it (mountinfo root form, SPIRE #4004).
            (
                format!(
                    "0::/../../kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope",
                    p3.replace('-', "_")
                ),
                info(Some(p3), CID),
            ),
            // cgroup v2, cgroupfs driver, containerd, inside a cgroup namespace: relative path (SPIRE #4004).
            (format!("0::/../../pod{p3}/{CID}"), info(Some(p3), CID)),
            // containerd's systemd-cgroup colon form (containerd docs, SPIRE extract_test.go).
            (
                format!("0::/kubepods-besteffort-pod{}.slice:cri-containerd:{CID}", p4.replace('-', "_")),
                info(Some(p4), CID),
            ),
            // This machine's test cluster: containerd 2.2, cgroupfs driver, cgroup v1 hybrid.
            (
                format!(
                    "12:pids:/kubepods/besteffort/pod{p3}/{CID}\n4:memory:/kubepods/besteffort/pod{p3}/{CID}\n1:name=systemd:/kubepods/besteffort/pod{p3}/{CID}\n0::/"
                ),
                info(Some(p3), CID),
            ),
            // No pod UID in the path: the container alone, every pod is searched.
            (format!("0::/kubepods.slice/crio-{CID}.scope"), info(None, CID)),
            // Outside the kubelet's hierarchy (cri-o + kubeedge's system.slice, `docker run`): not a pod's
            // process, whatever the path names (see under_kubelet_hierarchy).
            (format!("0::/system.slice/crio-{CID}.scope"), None),
            (format!("0::/docker/{CID}"), None),
            // Forged: a user's delegated cgroup v2 subtree naming a victim pod and container.
            (format!("0::/user.slice/user-1000.slice/user@1000.service/pod{p1}/{CID}"), None),
            (format!("0::/user.slice/user-1000.slice/user@1000.service/kubepods/pod{p1}/{CID}"), None),
            (format!("0::/../../../user.slice/user-1000.slice/user@1000.service/app.slice/pod{p1}/{CID}"), None),
            (format!("0::/docker/{KIND}/user.slice/pod{p1}/{CID}"), None),
            (format!("0::/docker/not-a-node/kubepods/pod{p1}/{CID}"), None),
            // Not in a pod (SPIRE testdata cgroups_pid_not_in_pod.txt).
            ("1:name=systemd:/user.slice/user-1000.slice/session-2.scope".into(), None),
            ("0::/".into(), None),
            (String::new(), None),
            // cri-o's conmon is not the workload (SPIRE #4088).
            (format!("12:pids:/system.slice/crio-conmon-{CID}.scope"), None),
            // conmon beside the container's own lines: the conmon line is ignored.
            (
                format!("12:pids:/system.slice/crio-conmon-{CID2}.scope\n4:memory:/kubepods/besteffort/pod{p3}/{CID}"),
                info(Some(p3), CID),
            ),
            // A line naming the pod beats one that does not, even with another container ID.
            (format!("0::/system.slice/crio-{CID2}.scope\n4:memory:/kubepods/pod{p1}/{CID}"), info(Some(p1), CID)),
            // Not word-bounded / wrong lengths: no container.
            (format!("0::/kubepods/pod{p1}/{CID}0"), None),
            (format!("0::/kubepods/pod{p1}/x{CID}"), None),
            (format!("0::/kubepods/pod{p1}/{CID}_1"), None),
            (format!("0::/kubepods/pod{p1}/{}", &CID[1..]), None),
            // A malformed pod UID is not a pod UID.
            (format!("0::/kubepods/pod{}/{CID}", p1.replace('-', ".")), info(None, CID)),
            (format!("0::/kubepods/xpod{p1}/{CID}"), info(None, CID)),
            // A later (inner) pod UID wins over an earlier one on the same path.
            (format!("0::/kubepods/pod{p1}/pod{p2}/{CID}"), info(Some(p2), CID)),
            // A pod UID after the container ID does not count.
            (format!("0::/{CID}/pod{p1}"), info(None, CID)),
            // Upper-case hex is hex (RE2's [[:xdigit:]]).
            (format!("0::/kubepods/pod{p1}/{}", CID.to_uppercase()), info(Some(p1), &CID.to_uppercase())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cgroup(&input), Ok(want), "{input}");
        }
    }

    #[test]
    fn conflicts_and_garbage() {
        let p1 = "2c48913c-b29f-11e7-9350-020968147796";
        let p2 = "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80";
        let two_pods = format!("4:memory:/kubepods/pod{p1}/{CID}\n3:cpu:/kubepods/pod{p2}/{CID}");
        assert_eq!(parse_cgroup(&two_pods), Err(CgroupError::MultiplePodUids(p1.into(), p2.into())));
        let two_containers = format!("4:memory:/kubepods/pod{p1}/{CID}\n3:cpu:/kubepods/pod{p1}/{CID2}");
        assert_eq!(parse_cgroup(&two_containers), Err(CgroupError::MultipleContainerIds(CID.into(), CID2.into())));
        let two_bare = format!("4:memory:/kubepods/{CID}\n3:cpu:/kubepods/{CID2}");
        assert!(matches!(parse_cgroup(&two_bare), Err(CgroupError::MultipleContainerIds(..))));
        assert_eq!(parse_cgroup("0::/\nnot a cgroup line"), Err(CgroupError::Malformed { line: 2 }));
        assert_eq!(parse_cgroup("garbage"), Err(CgroupError::Malformed { line: 1 }));
        // Odd input never panics.
        for s in ["::", ":::::", "0::pod", "0::/pod", "0::/pod-", "\u{0}:\u{0}:\u{0}", "0::/é/ü/pod/ß", "0:x:pod1234"]
        {
            let _ = parse_cgroup(s);
        }
        let long = format!("0::/{}", "a".repeat(100_000));
        assert_eq!(parse_cgroup(&long), Ok(None));
        let multibyte = format!("0::/kubepods/é{CID}é/ü");
        assert_eq!(parse_cgroup(&multibyte), Ok(info(None, CID)));
    }
}
