//! SPIRE-style command-line flags for every Sigil binary: `-parentID x` and `-parentID=x` mean `--parentID x`.
//!
//! clap only knows `--long`, so single-dash multi-letter flags are rewritten before parsing. Values are never
//! rewritten: an argument following a flag that takes a value is passed through even when it starts with '-'
//! (`-ttl -1`, `-hint -x`). Pure string logic; each binary passes the names of its flags that take no value.

/// Rewrites `-name` / `-name=value` into `--name` / `--name=value`; `bool_flags` take no value.
pub fn normalize_spire_flags(args: impl IntoIterator<Item = String>, bool_flags: &[&str]) -> Vec<String> {
    let mut out = vec![];
    let mut value_next = false;
    let mut positional_only = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || value_next || positional_only {
            value_next = false;
            out.push(arg);
            continue;
        }
        if arg == "--" {
            // Everything after `--` is positional, whatever it looks like.
            positional_only = true;
            out.push(arg);
            continue;
        }
        let single_dash = arg.len() > 2
            && arg.starts_with('-')
            && !arg.starts_with("--")
            && arg.as_bytes().get(1).is_some_and(u8::is_ascii_alphabetic);
        let name = if single_dash { arg.get(1..) } else { arg.strip_prefix("--") };
        if let Some(name) = name {
            let flag = name.split('=').next().unwrap_or_default();
            value_next = !flag.is_empty() && !name.contains('=') && !bool_flags.contains(&flag);
        }
        out.push(if single_dash { format!("-{arg}") } else { arg });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let bools = ["admin", "help"];
        let cases: &[(&[&str], &[&str])] = &[
            (&["x", "entry", "create", "-parentID", "p"], &["x", "entry", "create", "--parentID", "p"]),
            (&["x", "-spiffeID=spiffe://td/a"], &["x", "--spiffeID=spiffe://td/a"]),
            (&["x", "--spiffeID", "v"], &["x", "--spiffeID", "v"]),
            (&["x", "-admin", "-hint", "-weird"], &["x", "--admin", "--hint", "-weird"]),
            (&["x", "-ttl", "-1"], &["x", "--ttl", "-1"]),
            (&["x", "-h"], &["x", "-h"]),
            (&["x", "--admin", "-dns", "a"], &["x", "--admin", "--dns", "a"]),
            (&["x", "--", "-notaflag"], &["x", "--", "-notaflag"]),
        ];
        for (input, want) in cases {
            let got = normalize_spire_flags(input.iter().map(|s| s.to_string()), &bools);
            assert_eq!(got, want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{input:?}");
        }
    }
}
