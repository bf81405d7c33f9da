//! Logging setup shared by Sigil's binaries (server, agent, CSI driver, operator).
//!
//! Every binary logs the same way: to stderr, through an `EnvFilter` taken from `RUST_LOG` when it is set and
//! otherwise built from the configured level plus quieting directives for the chatty transport crates, with ANSI
//! colours only when stderr is a terminal, as human-readable text or one JSON object per line.

use std::fmt;

/// Directives every binary adds after its level: the HTTP/2, HPACK, TLS and tower stacks log every frame or
/// handshake step at debug, and the kube client every request (its errors reach our own log lines).
const QUIET_DIRECTIVES: &[&str] =
    &["h2=warn", "hyper=warn", "tower=warn", "loona_hpack=warn", "rustls=warn", "kube_client=warn", "kube=warn"];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A log format name other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of text, json")]
pub struct UnknownLogFormat(pub String);

/// A log level name that logrus (and so SPIRE) does not know either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of trace, debug, info, warn, error")]
pub struct UnknownLogLevel(pub String);

/// Parses a log level as SPIRE does (logrus' names in any case: `warning` is `warn`; `fatal` and `panic`,
/// which only say how little to log, are `error`) and returns the name the tracing filter takes. One rule
/// for the server, the agent and the operator, so a SPIRE config's `log_level` works in all of them.
pub fn parse_log_level(value: &str) -> Result<&'static str, UnknownLogLevel> {
    match value.to_ascii_lowercase().as_str() {
        "trace" => Ok("trace"),
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" | "warning" => Ok("warn"),
        "error" | "fatal" | "panic" => Ok("error"),
        _ => Err(UnknownLogLevel(value.to_owned())),
    }
}

impl LogFormat {
    /// Parses a format name as SPIRE does: `text` or `json` in any case, and empty for the default (text).
    pub fn parse(value: &str) -> Result<Self, UnknownLogFormat> {
        match value.to_ascii_uppercase().as_str() {
            "" | "TEXT" => Ok(Self::Text),
            "JSON" => Ok(Self::Json),
            _ => Err(UnknownLogFormat(value.to_owned())),
        }
    }

    /// The name [`LogFormat::parse`] accepts for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Text, Self::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Self::Text => "Human-readable lines",
            Self::Json => "One JSON object per line",
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

/// The filter used when `RUST_LOG` is not set: `level`, then the transport-quieting directives, then `extra`
/// (e.g. `kube=warn`), comma-separated. Later directives for the same target win in `EnvFilter`, so `extra` can
/// override the defaults.
pub fn default_filter(level: &str, extra_directives: &[&str]) -> String {
    std::iter::once(level)
        .chain(QUIET_DIRECTIVES.iter().copied())
        .chain(extra_directives.iter().copied())
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global tracing subscriber: filter from `RUST_LOG`, else [`default_filter`]`(level,
/// extra_directives)`; output to stderr in `format`, coloured only when stderr is a terminal.
///
/// Call once, at startup. Panics if a global subscriber is already installed (a programming error).
pub fn init_logging(level: &str, format: LogFormat, extra_directives: &[&str]) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(level, extra_directives)));
    // Colours only on a terminal: in a container, `kubectl logs` would show raw escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parses_as_spire_does() {
        let cases: &[(&str, Result<LogFormat, UnknownLogFormat>)] = &[
            ("text", Ok(LogFormat::Text)),
            ("json", Ok(LogFormat::Json)),
            ("TEXT", Ok(LogFormat::Text)),
            ("Json", Ok(LogFormat::Json)),
            ("", Ok(LogFormat::Text)),
            ("xml", Err(UnknownLogFormat("xml".into()))),
            (" text", Err(UnknownLogFormat(" text".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&LogFormat::parse(input), want, "input {input:?}");
            assert_eq!(&input.parse::<LogFormat>(), want, "FromStr for {input:?}");
        }
        assert_eq!(LogFormat::parse("xml").unwrap_err().to_string(), r#""xml" is not one of text, json"#);
    }

    #[test]
    fn level_parses_as_spire_does() {
        let cases: &[(&str, Result<&str, UnknownLogLevel>)] = &[
            ("info", Ok("info")),
            ("INFO", Ok("info")),
            ("Debug", Ok("debug")),
            ("trace", Ok("trace")),
            ("warn", Ok("warn")),
            ("WARNING", Ok("warn")),
            ("error", Ok("error")),
            ("fatal", Ok("error")),
            ("panic", Ok("error")),
            ("loud", Err(UnknownLogLevel("loud".into()))),
            ("", Err(UnknownLogLevel(String::new()))),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_log_level(input), want, "input {input:?}");
        }
        assert_eq!(
            parse_log_level("loud").unwrap_err().to_string(),
            r#""loud" is not one of trace, debug, info, warn, error"#
        );
    }

    #[test]
    fn names_round_trip() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(format.as_str()), Ok(format));
            assert_eq!(format.to_string(), format.as_str());
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }

    #[test]
    fn default_filter_strings() {
        const Q: &str = "h2=warn,hyper=warn,tower=warn,loona_hpack=warn,rustls=warn,kube_client=warn,kube=warn";
        let cases: &[(&str, &[&str], String)] = &[
            ("info", &[], format!("info,{Q}")),
            ("debug", &["kube=warn"], format!("debug,{Q},kube=warn")),
            ("warn", &["kube=info", "sigil=trace"], format!("warn,{Q},kube=info,sigil=trace")),
            ("", &[], Q.to_owned()),
            ("info", &[""], format!("info,{Q}")),
        ];
        for (level, extra, want) in cases {
            assert_eq!(default_filter(level, extra), *want, "level {level:?} extra {extra:?}");
        }
    }

    #[test]
    fn default_filter_parses_as_env_filter() {
        let filter = default_filter("debug", &["kube=warn"]);
        let parsed = tracing_subscriber::EnvFilter::builder().parse(&filter);
        assert!(parsed.is_ok(), "{filter} did not parse: {parsed:?}");
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_value_names_match_parse() {
        use clap::ValueEnum as _;
        for format in LogFormat::value_variants() {
            let name = format.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref(), Some(format.as_str()));
            assert_eq!(<LogFormat as clap::ValueEnum>::from_str(format.as_str(), false), Ok(*format));
        }
    }
}
