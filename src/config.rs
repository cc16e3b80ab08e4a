//! The configuration file: reads pgpool.conf / postgresql.conf syntax (`name = value`, `#`
//! comments, single-quoted strings) into a validated [`Config`] with every default filled in.
//!
//! This module owns the syntax, the defaults, the checks on every value (each error is
//! `FILE:LINE: message`) and the list of settings that a reload (SIGHUP) cannot apply. It must
//! not open anything but the configuration file itself: paths are resolved relative to the
//! file's directory, never checked for existence here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

/// Highest number of backend nodes (indices 0 ..= 127), as in pgpool-II.
pub const MAX_BACKENDS: usize = 128;

/// Longest accepted duration: the largest PostgreSQL integer setting, in seconds.
const MAX_DURATION_MS: u64 = i32::MAX as u64 * 1000;

/// A configuration problem, already formatted as `FILE:LINE: message` (or `FILE: message`
/// when the file could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Defines a setting's enum with its config spellings: `as_str()` gives the spelling,
/// `from_config()` parses it (case-insensitively), `ALL` lists every value.
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the documentation lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The spelling used in the configuration file.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses the configuration spelling (case-insensitive).
            pub fn from_config(text: &str) -> Option<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(text.trim()))
            }

            fn allowed() -> String {
                let spellings = Self::ALL
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("allowed: {spellings}")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum! {
    /// What pgmulti does with the nodes (`mode`).
    Mode {
        /// Every session is relayed to one node (the lowest-id live node), with tracing.
        Relay => "relay",
        /// Multi-main: reads go to one node, writes are replicated to every live node.
        Replication => "replication",
        /// A primary and hot standbys (PostgreSQL's streaming replication): writes go to the
        /// primary, reads to a standby that has the session's last commit.
        Streaming => "streaming",
    }
}

config_enum! {
    /// How clients authenticate to pgmulti (`client_auth`).
    ClientAuth {
        Trust => "trust",
        Password => "password",
        Md5 => "md5",
        ScramSha256 => "scram-sha-256",
    }
}

config_enum! {
    /// TLS towards the nodes (`backend_sslmode`), with libpq's meanings.
    SslMode {
        Disable => "disable",
        Allow => "allow",
        Prefer => "prefer",
        Require => "require",
        VerifyCa => "verify-ca",
        VerifyFull => "verify-full",
    }
}

config_enum! {
    /// When a replicated write is acknowledged to the client (`write_ack`).
    WriteAck {
        /// After every live node has answered.
        Sync => "sync",
        /// After the lead node has answered; replicas are checked at the next sync point.
        Async => "async",
    }
}

config_enum! {
    /// How a replicated transaction commits (`commit_protocol`).
    CommitProtocol {
        /// Replicas commit first, then the lead.
        Plain => "plain",
        /// PREPARE TRANSACTION everywhere, then COMMIT PREPARED.
        TwoPhase => "two_phase",
    }
}

config_enum! {
    /// When a relay session's node connection goes back to the pool (`pool_mode`).
    PoolMode {
        /// When the client leaves (after a reset).
        Session => "session",
        /// After every transaction (no reset): session state is not kept, as with
        /// PgBouncer's transaction pooling.
        Transaction => "transaction",
    }
}

/// One PostgreSQL node (`backend_hostnameN`, `backend_portN`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Host name, IP address, or a directory holding the node's Unix socket (starts with `/`).
    pub hostname: String,
    pub port: u16,
    /// Relative share of reads; 0 means "no reads unless no other node is up".
    pub weight: f64,
    /// The node's data directory, used by online recovery.
    pub data_directory: Option<PathBuf>,
}

/// The validated configuration. Every field has its default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The configuration file, as given on the command line.
    pub file: PathBuf,
    /// Addresses to listen on; `*` means all IPv4 and IPv6 addresses (0.0.0.0 and ::).
    /// Empty: no TCP listener.
    pub listen_addresses: Vec<String>,
    pub port: u16,
    /// Directories for the Unix socket `.s.PGSQL.<port>`. Empty: no Unix socket.
    pub unix_socket_directories: Vec<PathBuf>,
    pub mode: Mode,
    /// At least one; index = node id.
    pub backends: Vec<Backend>,
    pub auth_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub ssl: bool,
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    pub backend_sslmode: SslMode,
    pub backend_ssl_ca_file: Option<PathBuf>,
    /// `None`: standard error.
    pub log_file: Option<PathBuf>,
    pub log_level: LevelFilter,
    /// Lines the log queue holds before further lines are counted as dropped.
    pub log_queue_size: usize,
    pub write_ack: WriteAck,
    pub commit_protocol: CommitProtocol,
    /// Zero disables health checks.
    pub health_check_period: Duration,
    /// Zero: no limit.
    pub health_check_timeout: Duration,
    /// Replication mode: how long a node may still be running a statement after the node
    /// whose answer the client gets has answered it; zero: no limit.
    pub node_response_timeout: Duration,
    pub status_file: Option<PathBuf>,
    /// Run (by `sh -c`, not waited for) whenever a node is detached; placeholders
    /// `%d %h %p %D` (failed node), `%m %H %r` (new lead), `%M` (old lead), `%%`.
    pub failover_command: String,
    /// `mode = streaming`: run (by `sh -c`, not waited for) for every other standby after
    /// pgmulti promoted one; placeholders as `failover_command`'s, `%d %h %p %D` the
    /// standby, `%m %H %r` the new primary.
    pub follow_primary_command: String,
    /// Further attempts after a failed health check before the node is detached.
    pub health_check_max_retries: usize,
    pub health_check_retry_delay: Duration,
    /// `RECOVER NODE`: run while clients keep writing (e.g. a base backup of the lead).
    pub recovery_1st_stage_command: String,
    /// `RECOVER NODE`: run while new transactions wait (e.g. final sync and promote).
    pub recovery_2nd_stage_command: String,
    /// How long stage 2 (and ATTACH NODE) waits for running transactions, and for the
    /// recovered node to accept connections.
    pub recovery_timeout: Duration,
    /// Port of the Prometheus `/metrics` endpoint (0: none), on `listen_addresses`.
    pub metrics_port: u16,
    /// Where two-phase commit decisions are written before COMMIT PREPARED.
    pub two_phase_log: PathBuf,
    /// The role pgmulti uses on its own (checks at start-up, resolving prepared transactions).
    pub health_check_user: String,
    /// Its password; empty: the auth_file entry, or none (trust).
    pub health_check_password: String,
    pub health_check_database: String,
    pub admin_users: Vec<String>,
    /// Zero: no limit.
    pub authentication_timeout: Duration,
    /// Zero: no limit.
    pub connect_timeout: Duration,
    /// Zero: no limit.
    pub client_idle_timeout: Duration,
    /// Zero: SIGTERM does not wait for transactions.
    pub shutdown_timeout: Duration,
    pub max_client_conn: usize,
    /// Idle node connections kept per node, database and user for the next client to
    /// reuse (0: no pooling).
    pub max_pool_size: usize,
    /// `mode = streaming`: a standby further behind the primary than this many bytes of WAL
    /// serves no reads.
    pub max_standby_lag: u64,
    /// `mode = streaming`: a standby whose replay is further behind than this in time serves
    /// no reads (zero: no limit).
    pub max_standby_delay: Duration,
    /// Replication and streaming modes: bytes all sessions together may hold for client
    /// messages larger than a receive buffer (`session::budget`).
    pub max_message_memory: u64,
    /// `mode = streaming`: a session's reads go only to standbys that have replayed its
    /// last commit (off: to any standby within `max_standby_lag`).
    pub read_your_writes: bool,
    /// (database, user) pairs whose node connections are opened at start-up.
    pub preconnect: Vec<(String, String)>,
    /// Idle connections kept ready per node for each `preconnect` pair.
    pub min_pool_size: usize,
    /// Relay mode: a node connection per session, or per transaction.
    pub pool_mode: PoolMode,
}

/// The log levels `log_level` accepts, in increasing verbosity.
const LOG_LEVELS: &[(&str, LevelFilter)] = &[
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

/// Every parameter name except the numbered backend ones.
const PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "mode",
    "auth_file",
    "client_auth",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "backend_sslmode",
    "backend_ssl_ca_file",
    "log_file",
    "log_level",
    "log_queue_size",
    "write_ack",
    "commit_protocol",
    "health_check_period",
    "health_check_timeout",
    "node_response_timeout",
    "status_file",
    "two_phase_log",
    "failover_command",
    "follow_primary_command",
    "health_check_max_retries",
    "health_check_retry_delay",
    "recovery_1st_stage_command",
    "recovery_2nd_stage_command",
    "recovery_timeout",
    "metrics_port",
    "health_check_user",
    "health_check_password",
    "health_check_database",
    "admin_users",
    "authentication_timeout",
    "connect_timeout",
    "client_idle_timeout",
    "shutdown_timeout",
    "max_client_conn",
    "max_pool_size",
    "max_standby_lag",
    "max_standby_delay",
    "max_message_memory",
    "read_your_writes",
    "preconnect",
    "min_pool_size",
    "pool_mode",
];

/// The per-node parameters, written with the node index appended (`backend_port1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendField {
    Hostname,
    Port,
    Weight,
    DataDirectory,
}

const BACKEND_FIELDS: &[(&str, BackendField)] = &[
    ("backend_hostname", BackendField::Hostname),
    ("backend_port", BackendField::Port),
    ("backend_weight", BackendField::Weight),
    ("backend_data_directory", BackendField::DataDirectory),
];

/// Reads and parses a configuration file. Relative paths inside it are resolved relative to
/// the file's directory; errors name the file as `path` spells it.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{file_name}: cannot read: {e}")))?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
    parse(&text, &file_name, base_dir)
}

/// Parses configuration text. `file_name` is used in error messages and stored in
/// [`Config::file`]; relative paths in values are joined to `base_dir`.
pub fn parse(text: &str, file_name: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    Parser {
        file_name,
        base_dir,
    }
    .parse(text)
}

/// A value as written, with the line it came from.
#[derive(Debug)]
struct Setting {
    value: String,
    line: usize,
}

/// The keys of one backend index, before validation.
#[derive(Default)]
struct BackendSettings {
    hostname: Option<String>,
    port: Option<u16>,
    weight: Option<f64>,
    data_directory: Option<PathBuf>,
    first_line: usize,
}

struct Parser<'a> {
    file_name: &'a str,
    base_dir: &'a Path,
}

impl Parser<'_> {
    fn error(&self, line: usize, message: impl fmt::Display) -> ConfigError {
        ConfigError(format!("{}:{}: {}", self.file_name, line, message))
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);

        // Pass 1: syntax and names; the last occurrence of a name wins.
        let mut settings: HashMap<String, Setting> = HashMap::new();
        let mut last_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            last_line = line;
            let Some((name, value)) = parse_line(raw).map_err(|m| self.error(line, m))? else {
                continue;
            };
            if !PARAMETERS.contains(&name.as_str()) {
                if let Some((_, index)) = backend_key(&name) {
                    if index >= MAX_BACKENDS {
                        return Err(self.error(
                            line,
                            format_args!(
                                "backend index {index} in \"{name}\" is out of range \
                                 (0 to {})",
                                MAX_BACKENDS - 1
                            ),
                        ));
                    }
                } else {
                    return Err(self.error(
                        line,
                        format_args!("unknown configuration parameter \"{name}\""),
                    ));
                }
            }
            settings.insert(name, Setting { value, line });
        }
        let missing_line = last_line + 1;

        // Pass 2: values, in file order so that the first bad line is the one reported.
        let mut ordered: Vec<(&String, &Setting)> = settings.iter().collect();
        ordered.sort_by_key(|(_, s)| s.line);

        let mut config = Config::defaults(PathBuf::from(self.file_name));
        config.two_phase_log = resolve(self.base_dir, "pgmulti.2pc");
        let mut client_auth_line = None;
        let mut ssl_line = 0;
        let mut sslmode_line = 0;
        let mut max_pool_line = 0;
        let mut backends: BTreeMap<usize, BackendSettings> = BTreeMap::new();

        for (name, setting) in ordered {
            let value = setting.value.as_str();
            let line = setting.line;
            let bad = |allowed: &str| {
                self.error(
                    line,
                    format_args!("invalid value for parameter \"{name}\": \"{value}\" ({allowed})"),
                )
            };
            match name.as_str() {
                "listen_addresses" => {
                    let addresses = split_list(value);
                    if addresses.iter().any(|a| a.contains(char::is_whitespace)) {
                        return Err(bad(
                            "expected a comma-separated list of host names or addresses, or '*'",
                        ));
                    }
                    config.listen_addresses = addresses;
                }
                "port" => {
                    config.port = parse_port(value).ok_or_else(|| bad(PORT_ALLOWED))?;
                }
                "unix_socket_directories" => {
                    config.unix_socket_directories = split_list(value)
                        .iter()
                        .map(|d| resolve(self.base_dir, d))
                        .collect();
                }
                "mode" => {
                    config.mode = Mode::from_config(value).ok_or_else(|| bad(&Mode::allowed()))?
                }
                "auth_file" => config.auth_file = self.optional_path(value),
                "client_auth" => {
                    config.client_auth = ClientAuth::from_config(value)
                        .ok_or_else(|| bad(&ClientAuth::allowed()))?;
                    client_auth_line = Some(line);
                }
                "ssl" => {
                    config.ssl = parse_bool(value).ok_or_else(|| bad(BOOL_ALLOWED))?;
                    ssl_line = line;
                }
                "ssl_cert_file" => config.ssl_cert_file = self.optional_path(value),
                "ssl_key_file" => config.ssl_key_file = self.optional_path(value),
                "backend_sslmode" => {
                    config.backend_sslmode =
                        SslMode::from_config(value).ok_or_else(|| bad(&SslMode::allowed()))?;
                    sslmode_line = line;
                }
                "backend_ssl_ca_file" => config.backend_ssl_ca_file = self.optional_path(value),
                "log_file" => config.log_file = self.optional_path(value),
                "log_level" => {
                    config.log_level = LOG_LEVELS
                        .iter()
                        .find(|(text, _)| text.eq_ignore_ascii_case(value.trim()))
                        .map(|&(_, level)| level)
                        .ok_or_else(|| bad("allowed: error, warn, info, debug, trace"))?;
                }
                "log_queue_size" => {
                    config.log_queue_size = parse_count(value).ok_or_else(|| bad(COUNT_ALLOWED))?;
                }
                "write_ack" => {
                    config.write_ack =
                        WriteAck::from_config(value).ok_or_else(|| bad(&WriteAck::allowed()))?
                }
                "commit_protocol" => {
                    config.commit_protocol = CommitProtocol::from_config(value)
                        .ok_or_else(|| bad(&CommitProtocol::allowed()))?;
                }
                "health_check_period" => {
                    config.health_check_period = parse_duration(value).map_err(bad)?
                }
                "node_response_timeout" => {
                    config.node_response_timeout = parse_duration(value).map_err(bad)?
                }
                "health_check_timeout" => {
                    config.health_check_timeout = parse_duration(value).map_err(bad)?
                }
                "status_file" => config.status_file = self.optional_path(value),
                "two_phase_log" => {
                    config.two_phase_log = self
                        .optional_path(value)
                        .ok_or_else(|| bad("expected a file name"))?
                }
                "health_check_user" => config.health_check_user = value.trim().to_string(),
                "failover_command" => config.failover_command = value.to_string(),
                "follow_primary_command" => config.follow_primary_command = value.to_string(),
                "health_check_max_retries" => {
                    config.health_check_max_retries = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad("expected a non-negative integer"))?;
                }
                "health_check_retry_delay" => {
                    config.health_check_retry_delay = parse_duration(value).map_err(bad)?
                }
                "recovery_1st_stage_command" => {
                    config.recovery_1st_stage_command = value.to_string()
                }
                "recovery_2nd_stage_command" => {
                    config.recovery_2nd_stage_command = value.to_string()
                }
                "recovery_timeout" => {
                    config.recovery_timeout = parse_duration(value).map_err(bad)?
                }
                "metrics_port" => {
                    config.metrics_port = match value.trim() {
                        "0" => 0,
                        v => parse_port(v).ok_or_else(|| bad("expected 0 (off) or a port"))?,
                    }
                }
                "health_check_password" => config.health_check_password = value.to_string(),
                "health_check_database" => config.health_check_database = value.trim().to_string(),
                "admin_users" => config.admin_users = split_list(value),
                "authentication_timeout" => {
                    config.authentication_timeout = parse_duration(value).map_err(bad)?
                }
                "connect_timeout" => config.connect_timeout = parse_duration(value).map_err(bad)?,
                "client_idle_timeout" => {
                    config.client_idle_timeout = parse_duration(value).map_err(bad)?
                }
                "shutdown_timeout" => {
                    config.shutdown_timeout = parse_duration(value).map_err(bad)?
                }
                "max_client_conn" => {
                    config.max_client_conn =
                        parse_count(value).ok_or_else(|| bad(COUNT_ALLOWED))?;
                }
                "preconnect" => {
                    config.preconnect = split_list(value)
                        .iter()
                        .map(|item| match item.split_once(':') {
                            Some((db, user))
                                if !db.trim().is_empty() && !user.trim().is_empty() =>
                            {
                                Ok((db.trim().to_string(), user.trim().to_string()))
                            }
                            _ => Err(bad("expected a list of database:user pairs")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "pool_mode" => {
                    config.pool_mode =
                        PoolMode::from_config(value).ok_or_else(|| bad(&PoolMode::allowed()))?
                }
                "min_pool_size" => {
                    config.min_pool_size = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad("expected a non-negative integer"))?;
                }
                "max_standby_lag" => {
                    config.max_standby_lag = parse_bytes(value).map_err(bad)?;
                }
                "max_standby_delay" => {
                    config.max_standby_delay = parse_duration(value).map_err(bad)?;
                }
                "max_message_memory" => {
                    config.max_message_memory = parse_bytes(value).map_err(bad)?;
                }
                "read_your_writes" => {
                    config.read_your_writes = parse_bool(value).ok_or_else(|| bad(BOOL_ALLOWED))?;
                }
                "max_pool_size" => {
                    max_pool_line = line;
                    config.max_pool_size = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad("expected a non-negative integer"))?;
                }
                other => {
                    // Pass 1 admitted only known names, so this is a backend key.
                    let Some((field, index)) = backend_key(other) else {
                        return Err(self.error(
                            line,
                            format_args!("unknown configuration parameter \"{other}\""),
                        ));
                    };
                    let backend = backends.entry(index).or_insert_with(|| BackendSettings {
                        first_line: line,
                        ..BackendSettings::default()
                    });
                    match field {
                        BackendField::Hostname => {
                            let host = value.trim();
                            if host.is_empty() || host.contains(char::is_whitespace) {
                                return Err(bad(
                                    "expected a host name, IP address or socket directory",
                                ));
                            }
                            backend.hostname = Some(host.to_string());
                        }
                        BackendField::Port => {
                            backend.port =
                                Some(parse_port(value).ok_or_else(|| bad(PORT_ALLOWED))?);
                        }
                        BackendField::Weight => {
                            backend.weight = Some(
                                parse_weight(value)
                                    .ok_or_else(|| bad("expected a non-negative number"))?,
                            );
                        }
                        BackendField::DataDirectory => {
                            backend.data_directory = self.optional_path(value);
                        }
                    }
                }
            }
        }

        config.backends = self.backends(backends, missing_line)?;

        // Settings that depend on each other.
        match client_auth_line {
            None if config.auth_file.is_some() => config.client_auth = ClientAuth::ScramSha256,
            None => config.client_auth = ClientAuth::Trust,
            Some(line) => {
                if config.client_auth != ClientAuth::Trust && config.auth_file.is_none() {
                    return Err(self.error(
                        line,
                        format_args!(
                            "client_auth = {} requires auth_file to be set",
                            config.client_auth.as_str()
                        ),
                    ));
                }
            }
        }
        if config.ssl {
            for (key, value) in [
                ("ssl_cert_file", &config.ssl_cert_file),
                ("ssl_key_file", &config.ssl_key_file),
            ] {
                if value.is_none() {
                    return Err(
                        self.error(ssl_line, format_args!("ssl = on requires {key} to be set"))
                    );
                }
            }
        }
        if matches!(
            config.backend_sslmode,
            SslMode::VerifyCa | SslMode::VerifyFull
        ) && config.backend_ssl_ca_file.is_none()
        {
            return Err(self.error(
                sslmode_line,
                format_args!(
                    "backend_sslmode = {} requires backend_ssl_ca_file to be set",
                    config.backend_sslmode.as_str()
                ),
            ));
        }
        if config.pool_mode == PoolMode::Transaction && config.max_pool_size == 0 {
            return Err(self.error(
                max_pool_line,
                format_args!(
                    "max_pool_size = 0 (no pooling) cannot be used with pool_mode = \
                     transaction: there it is the number of node connections clients share"
                ),
            ));
        }
        Ok(config)
    }

    /// Turns the per-index keys into nodes: indices contiguous from 0, each with a hostname.
    fn backends(
        &self,
        backends: BTreeMap<usize, BackendSettings>,
        missing_line: usize,
    ) -> Result<Vec<Backend>, ConfigError> {
        if backends.is_empty() {
            return Err(self.error(
                missing_line,
                "missing required parameter \"backend_hostname0\"",
            ));
        }
        let mut nodes = Vec::with_capacity(backends.len());
        for (expected, (index, settings)) in backends.into_iter().enumerate() {
            if index != expected {
                return Err(self.error(
                    settings.first_line,
                    format_args!(
                        "backend {index} is configured but backend {expected} is not; \
                         backend indices must be contiguous from 0"
                    ),
                ));
            }
            let Some(hostname) = settings.hostname else {
                return Err(self.error(
                    missing_line,
                    format_args!("missing required parameter \"backend_hostname{index}\""),
                ));
            };
            nodes.push(Backend {
                hostname,
                port: settings.port.unwrap_or(5432),
                weight: settings.weight.unwrap_or(1.0),
                data_directory: settings.data_directory,
            });
        }
        Ok(nodes)
    }

    /// A path value; `''` means "not set".
    fn optional_path(&self, value: &str) -> Option<PathBuf> {
        let value = value.trim();
        (!value.is_empty()).then(|| resolve(self.base_dir, value))
    }
}

impl Config {
    /// Every default, with no backends yet.
    fn defaults(file: PathBuf) -> Config {
        Config {
            file,
            listen_addresses: vec!["localhost".to_string()],
            port: 9999,
            unix_socket_directories: vec![PathBuf::from("/tmp")],
            mode: Mode::Relay,
            backends: Vec::new(),
            auth_file: None,
            client_auth: ClientAuth::Trust,
            ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            backend_sslmode: SslMode::Prefer,
            backend_ssl_ca_file: None,
            log_file: None,
            log_level: LevelFilter::Info,
            log_queue_size: 65536,
            write_ack: WriteAck::Sync,
            commit_protocol: CommitProtocol::Plain,
            health_check_period: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(5),
            node_response_timeout: Duration::from_secs(30),
            status_file: None,
            two_phase_log: PathBuf::from("pgmulti.2pc"),
            health_check_user: "postgres".into(),
            failover_command: String::new(),
            follow_primary_command: String::new(),
            health_check_max_retries: 0,
            health_check_retry_delay: Duration::from_secs(1),
            recovery_1st_stage_command: String::new(),
            recovery_2nd_stage_command: String::new(),
            recovery_timeout: Duration::from_secs(90),
            metrics_port: 0,
            health_check_password: String::new(),
            health_check_database: "postgres".into(),
            admin_users: Vec::new(),
            authentication_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            max_client_conn: 10000,
            max_pool_size: 20,
            max_standby_lag: 16 << 20,
            max_standby_delay: Duration::ZERO,
            max_message_memory: 256 << 20,
            read_your_writes: true,
            preconnect: Vec::new(),
            min_pool_size: 1,
            pool_mode: PoolMode::Session,
        }
    }

    /// Names of the settings that differ between `self` (running) and `new` (just reloaded)
    /// and that a reload cannot apply: they take effect only after a restart. Everything else
    /// (log_level, auth_file, client_auth, admin_users, the timeouts, health check and
    /// recovery settings, backend weights and data directories, max_client_conn, nodes added
    /// at the end) is applied by SIGHUP.
    pub fn reloadable_diff(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check(
            "listen_addresses",
            self.listen_addresses != new.listen_addresses,
        );
        check("port", self.port != new.port);
        check(
            "unix_socket_directories",
            self.unix_socket_directories != new.unix_socket_directories,
        );
        check("mode", self.mode != new.mode);
        check("preconnect", self.preconnect != new.preconnect);
        let hosts = |c: &Config| {
            c.backends
                .iter()
                .map(|b| b.hostname.clone())
                .collect::<Vec<_>>()
        };
        let ports = |c: &Config| c.backends.iter().map(|b| b.port).collect::<Vec<_>>();
        // Nodes may be added at the end (they join detached); not changed or removed.
        check("backend_hostname", !new_at_end(&hosts(self), &hosts(new)));
        check("backend_port", !new_at_end(&ports(self), &ports(new)));
        check("ssl", self.ssl != new.ssl);
        check("ssl_cert_file", self.ssl_cert_file != new.ssl_cert_file);
        check("ssl_key_file", self.ssl_key_file != new.ssl_key_file);
        check(
            "backend_sslmode",
            self.backend_sslmode != new.backend_sslmode,
        );
        check(
            "backend_ssl_ca_file",
            self.backend_ssl_ca_file != new.backend_ssl_ca_file,
        );
        check("log_file", self.log_file != new.log_file);
        check("log_queue_size", self.log_queue_size != new.log_queue_size);
        check("write_ack", self.write_ack != new.write_ack);
        check(
            "commit_protocol",
            self.commit_protocol != new.commit_protocol,
        );
        check("status_file", self.status_file != new.status_file);
        check("metrics_port", self.metrics_port != new.metrics_port);
        check("pool_mode", self.pool_mode != new.pool_mode);
        changed
    }

    /// `self` (just reloaded) with every setting `reloadable_diff` names as `running` has it:
    /// what a reload applies. The node list keeps its running nodes (nodes added at the end
    /// are joined by the caller).
    pub fn keep_restart_settings(&mut self, running: &Config) {
        self.listen_addresses = running.listen_addresses.clone();
        self.port = running.port;
        self.unix_socket_directories = running.unix_socket_directories.clone();
        self.mode = running.mode;
        self.preconnect = running.preconnect.clone();
        let weights: Vec<_> = self.backends.iter().map(|b| b.weight).collect();
        self.backends = running.backends.clone();
        for (b, w) in self.backends.iter_mut().zip(weights) {
            b.weight = w;
        }
        self.ssl = running.ssl;
        self.ssl_cert_file = running.ssl_cert_file.clone();
        self.ssl_key_file = running.ssl_key_file.clone();
        self.backend_sslmode = running.backend_sslmode;
        self.backend_ssl_ca_file = running.backend_ssl_ca_file.clone();
        self.log_file = running.log_file.clone();
        self.log_queue_size = running.log_queue_size;
        self.write_ack = running.write_ack;
        self.commit_protocol = running.commit_protocol;
        self.status_file = running.status_file.clone();
        self.metrics_port = running.metrics_port;
        self.pool_mode = running.pool_mode;
    }

    /// Every setting as `(name, value)` in configuration spelling, for `SHOW CONFIG`.
    pub fn settings(&self) -> Vec<(String, String)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let paths = |ps: &[PathBuf]| {
            ps.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let level = LOG_LEVELS
            .iter()
            .find(|(_, l)| *l == self.log_level)
            .map_or("off", |(text, _)| text);
        let mut out: Vec<(String, String)> = vec![
            ("listen_addresses", self.listen_addresses.join(",")),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                paths(&self.unix_socket_directories),
            ),
            ("mode", self.mode.as_str().to_string()),
            ("auth_file", path(&self.auth_file)),
            ("client_auth", self.client_auth.as_str().to_string()),
            ("ssl", if self.ssl { "on" } else { "off" }.to_string()),
            ("ssl_cert_file", path(&self.ssl_cert_file)),
            ("ssl_key_file", path(&self.ssl_key_file)),
            ("backend_sslmode", self.backend_sslmode.as_str().to_string()),
            ("backend_ssl_ca_file", path(&self.backend_ssl_ca_file)),
            ("log_file", path(&self.log_file)),
            ("log_level", level.to_string()),
            ("log_queue_size", self.log_queue_size.to_string()),
            ("write_ack", self.write_ack.as_str().to_string()),
            ("commit_protocol", self.commit_protocol.as_str().to_string()),
            (
                "health_check_period",
                format_duration(self.health_check_period),
            ),
            (
                "health_check_timeout",
                format_duration(self.health_check_timeout),
            ),
            (
                "node_response_timeout",
                format_duration(self.node_response_timeout),
            ),
            ("status_file", path(&self.status_file)),
            ("two_phase_log", self.two_phase_log.display().to_string()),
            ("health_check_user", self.health_check_user.clone()),
            ("failover_command", self.failover_command.clone()),
            (
                "follow_primary_command",
                self.follow_primary_command.clone(),
            ),
            (
                "health_check_max_retries",
                self.health_check_max_retries.to_string(),
            ),
            (
                "health_check_retry_delay",
                format_duration(self.health_check_retry_delay),
            ),
            (
                "recovery_1st_stage_command",
                self.recovery_1st_stage_command.clone(),
            ),
            (
                "recovery_2nd_stage_command",
                self.recovery_2nd_stage_command.clone(),
            ),
            ("recovery_timeout", format_duration(self.recovery_timeout)),
            ("metrics_port", self.metrics_port.to_string()),
            ("health_check_password", self.health_check_password.clone()),
            ("health_check_database", self.health_check_database.clone()),
            ("admin_users", self.admin_users.join(",")),
            (
                "authentication_timeout",
                format_duration(self.authentication_timeout),
            ),
            ("connect_timeout", format_duration(self.connect_timeout)),
            (
                "client_idle_timeout",
                format_duration(self.client_idle_timeout),
            ),
            ("shutdown_timeout", format_duration(self.shutdown_timeout)),
            ("max_client_conn", self.max_client_conn.to_string()),
            ("max_pool_size", self.max_pool_size.to_string()),
            ("max_standby_lag", self.max_standby_lag.to_string()),
            ("max_standby_delay", format_duration(self.max_standby_delay)),
            ("max_message_memory", self.max_message_memory.to_string()),
            (
                "read_your_writes",
                if self.read_your_writes { "on" } else { "off" }.to_string(),
            ),
            (
                "preconnect",
                self.preconnect
                    .iter()
                    .map(|(d, u)| format!("{d}:{u}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("min_pool_size", self.min_pool_size.to_string()),
            ("pool_mode", self.pool_mode.as_str().to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        for (i, b) in self.backends.iter().enumerate() {
            out.push((format!("backend_hostname{i}"), b.hostname.clone()));
            out.push((format!("backend_port{i}"), b.port.to_string()));
            out.push((format!("backend_weight{i}"), b.weight.to_string()));
            out.push((
                format!("backend_data_directory{i}"),
                path(&b.data_directory),
            ));
        }
        out
    }
}

/// Splits one line into `(lower-case name, value)`; `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<(String, String)>, String> {
    let s = line.trim_start();
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return Err("syntax error: expected \"name = value\"".to_string());
    }
    let name = name.to_ascii_lowercase();

    let mut rest = s[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    }
    if rest.is_empty() || rest.starts_with('#') {
        return Err(format!("missing value for parameter \"{name}\""));
    }

    let (value, after) = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.char_indices().peekable();
        loop {
            match chars.next() {
                None => {
                    return Err(format!(
                        "unterminated quoted string in the value of parameter \"{name}\""
                    ))
                }
                Some((_, '\'')) if chars.peek().map(|&(_, c)| c) == Some('\'') => {
                    chars.next();
                    value.push('\'');
                }
                Some((i, '\'')) => break (value, &quoted[i + 1..]),
                Some((_, c)) => value.push(c),
            }
        }
    } else {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '#' || c == '\'')
            .unwrap_or(rest.len());
        (rest[..end].to_string(), &rest[end..])
    };

    let after = after.trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return Err(format!(
            "syntax error: unexpected \"{}\" after the value of parameter \"{name}\" \
             (quote values that contain spaces)",
            after.trim_end()
        ));
    }
    Ok(Some((name, value)))
}

/// `backend_port12` → `(Port, 12)`. The index is plain decimal without leading zeros.
fn backend_key(name: &str) -> Option<(BackendField, usize)> {
    BACKEND_FIELDS.iter().find_map(|&(prefix, field)| {
        let digits = name.strip_prefix(prefix)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        // Too many digits to be an index at all: report it as out of range.
        Some((field, digits.parse().unwrap_or(usize::MAX)))
    })
}

fn resolve(base_dir: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Comma-separated list; items trimmed, empty items dropped (so `''` is the empty list).
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `new` is `old` with items added at the end (or unchanged).
fn new_at_end<T: PartialEq>(old: &[T], new: &[T]) -> bool {
    new.len() >= old.len() && new[..old.len()] == *old
}

const PORT_ALLOWED: &str = "expected an integer from 1 to 65535";
const COUNT_ALLOWED: &str = "expected a positive integer";
const BOOL_ALLOWED: &str = "allowed: on, off, true, false, yes, no, 1, 0";

fn parse_port(value: &str) -> Option<u16> {
    value.trim().parse::<u16>().ok().filter(|&p| p != 0)
}

fn parse_count(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

fn parse_weight(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|w| w.is_finite() && *w >= 0.0)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

const DURATION_ALLOWED: &str = "expected a whole number of seconds, or a whole number with \
                                one of the units ms, s, min, h, such as '500ms' or '2min'";

/// A size: a number of bytes, or with a unit `kB`, `MB`, `GB` (powers of 1024, as
/// PostgreSQL's memory settings).
fn parse_bytes(value: &str) -> Result<u64, &'static str> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a size in bytes, kB, MB or GB")?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err("expected a size in bytes, kB, MB or GB"),
    };
    n.checked_mul(scale).ok_or("size too large")
}

/// A duration: a bare integer is seconds (as in pgpool.conf); `ms`, `s`, `min` and `h` are
/// accepted as units, optionally separated by spaces from the number.
fn parse_duration(value: &str) -> Result<Duration, &'static str> {
    let v = value.trim();
    if v.starts_with('-') {
        return Err("a duration must not be negative");
    }
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits_end == 0 {
        return Err(DURATION_ALLOWED);
    }
    let ms_per_unit: u64 = match v[digits_end..].trim_start() {
        "" | "s" => 1000,
        "ms" => 1,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DURATION_ALLOWED),
    };
    const TOO_LARGE: &str = "a duration must be at most 2147483647s (about 68 years)";
    let n: u64 = v[..digits_end].parse().map_err(|_| TOO_LARGE)?;
    match n.checked_mul(ms_per_unit) {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(Duration::from_millis(ms)),
        _ => Err(TOO_LARGE),
    }
}

/// The shortest exact spelling of a duration that [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "backend_hostname0 = '127.0.0.1'\n";

    fn parse_ok(text: &str) -> Config {
        match parse(text, "test.conf", Path::new("/etc/pgmulti")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text, "test.conf", Path::new("/etc/pgmulti")) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_from_a_minimal_file() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.file, PathBuf::from("test.conf"));
        assert_eq!(c.listen_addresses, vec!["localhost"]);
        assert_eq!(c.port, 9999);
        assert_eq!(c.unix_socket_directories, vec![PathBuf::from("/tmp")]);
        assert_eq!(c.mode, Mode::Relay);
        assert_eq!(
            c.backends,
            vec![Backend {
                hostname: "127.0.0.1".into(),
                port: 5432,
                weight: 1.0,
                data_directory: None
            }]
        );
        assert_eq!(c.auth_file, None);
        assert_eq!(c.client_auth, ClientAuth::Trust);
        assert!(!c.ssl);
        assert_eq!(c.ssl_cert_file, None);
        assert_eq!(c.ssl_key_file, None);
        assert_eq!(c.backend_sslmode, SslMode::Prefer);
        assert_eq!(c.backend_ssl_ca_file, None);
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.log_queue_size, 65536);
        assert_eq!(c.write_ack, WriteAck::Sync);
        assert_eq!(c.commit_protocol, CommitProtocol::Plain);
        assert_eq!(c.health_check_period, Duration::from_secs(10));
        assert_eq!(c.health_check_timeout, Duration::from_secs(5));
        assert_eq!(c.status_file, None);
        assert!(c.admin_users.is_empty());
        assert_eq!(c.authentication_timeout, Duration::from_secs(60));
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.client_idle_timeout, Duration::ZERO);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.max_client_conn, 10000);
    }

    #[test]
    fn every_key() {
        let c = parse_ok(
            "listen_addresses = '127.0.0.1, ::1'\n\
             port = 6432\n\
             unix_socket_directories = '/var/run/pgmulti,sockets'\n\
             mode = replication\n\
             backend_hostname0 = 'db0.example'\n\
             backend_port0 = 5433\n\
             backend_weight0 = 0.5\n\
             backend_data_directory0 = '/srv/pg0'\n\
             backend_hostname1 = '/var/run/postgresql'\n\
             backend_port1 = 5434\n\
             backend_weight1 = 0\n\
             backend_data_directory1 = 'data1'\n\
             auth_file = 'users.txt'\n\
             client_auth = md5\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = '/etc/ssl/server.key'\n\
             backend_sslmode = verify-full\n\
             backend_ssl_ca_file = 'root.crt'\n\
             log_file = '/var/log/pgmulti.log'\n\
             log_level = trace\n\
             log_queue_size = 1000\n\
             write_ack = async\n\
             commit_protocol = two_phase\n\
             health_check_period = 30\n\
             health_check_timeout = '2s'\n\
             status_file = 'pgmulti.status'\n\
             admin_users = 'postgres, admin'\n\
             authentication_timeout = 1min\n\
             connect_timeout = 500ms\n\
             client_idle_timeout = 1h\n\
             shutdown_timeout = 0\n\
             max_client_conn = 200\n",
        );
        assert_eq!(c.listen_addresses, vec!["127.0.0.1", "::1"]);
        assert_eq!(c.port, 6432);
        assert_eq!(
            c.unix_socket_directories,
            vec![
                PathBuf::from("/var/run/pgmulti"),
                PathBuf::from("/etc/pgmulti/sockets")
            ]
        );
        assert_eq!(c.mode, Mode::Replication);
        assert_eq!(
            c.backends,
            vec![
                Backend {
                    hostname: "db0.example".into(),
                    port: 5433,
                    weight: 0.5,
                    data_directory: Some("/srv/pg0".into()),
                },
                Backend {
                    hostname: "/var/run/postgresql".into(),
                    port: 5434,
                    weight: 0.0,
                    data_directory: Some("/etc/pgmulti/data1".into()),
                },
            ]
        );
        assert_eq!(c.auth_file, Some("/etc/pgmulti/users.txt".into()));
        assert_eq!(c.client_auth, ClientAuth::Md5);
        assert!(c.ssl);
        assert_eq!(c.ssl_cert_file, Some("/etc/pgmulti/server.crt".into()));
        assert_eq!(c.ssl_key_file, Some("/etc/ssl/server.key".into()));
        assert_eq!(c.backend_sslmode, SslMode::VerifyFull);
        assert_eq!(c.backend_ssl_ca_file, Some("/etc/pgmulti/root.crt".into()));
        assert_eq!(c.log_file, Some("/var/log/pgmulti.log".into()));
        assert_eq!(c.log_level, LevelFilter::Trace);
        assert_eq!(c.log_queue_size, 1000);
        assert_eq!(c.write_ack, WriteAck::Async);
        assert_eq!(c.commit_protocol, CommitProtocol::TwoPhase);
        assert_eq!(c.health_check_period, Duration::from_secs(30));
        assert_eq!(c.health_check_timeout, Duration::from_secs(2));
        assert_eq!(c.status_file, Some("/etc/pgmulti/pgmulti.status".into()));
        assert_eq!(c.admin_users, vec!["postgres", "admin"]);
        assert_eq!(c.authentication_timeout, Duration::from_secs(60));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.client_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
        assert_eq!(c.max_client_conn, 200);

        // SHOW CONFIG spelling parses back to the same configuration.
        let text: String = c
            .settings()
            .iter()
            .map(|(k, v)| format!("{k} = '{}'\n", v.replace('\'', "''")))
            .collect();
        let again = parse_ok(&text);
        assert_eq!(
            again,
            Config {
                file: again.file.clone(),
                ..c
            }
        );
    }

    #[test]
    fn every_enum_spelling_round_trips() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_config(m.as_str()), Some(*m));
        }
        for a in ClientAuth::ALL {
            assert_eq!(ClientAuth::from_config(a.as_str()), Some(*a));
        }
        for s in SslMode::ALL {
            assert_eq!(SslMode::from_config(s.as_str()), Some(*s));
        }
        for w in WriteAck::ALL {
            assert_eq!(WriteAck::from_config(w.as_str()), Some(*w));
        }
        for p in CommitProtocol::ALL {
            assert_eq!(CommitProtocol::from_config(p.as_str()), Some(*p));
        }
        assert_eq!(
            ClientAuth::from_config("SCRAM-SHA-256"),
            Some(ClientAuth::ScramSha256)
        );
        assert_eq!(SslMode::VerifyCa.to_string(), "verify-ca");
    }

    #[test]
    fn quoting_comments_and_layout() {
        let c = parse_ok(
            "\u{feff}# a comment line\n\
             \n\
             \t   \n\
             PORT 7000   # no '=' and a trailing comment\n\
             Backend_Hostname0=h\n\
             backend_data_directory0='/it''s # not a comment'# comment right after\n\
             admin_users = ''\n\
             listen_addresses = ''\n\
             unix_socket_directories=''\r\n\
             log_file = 'C:\\logs\\x' # backslashes are literal\n\
             mode = 'Replication'\n\
             port = 7001\n",
        );
        assert_eq!(c.port, 7001, "the last occurrence wins");
        assert_eq!(
            c.backends[0].data_directory,
            Some(PathBuf::from("/it's # not a comment"))
        );
        assert!(c.admin_users.is_empty());
        assert!(c.listen_addresses.is_empty());
        assert!(c.unix_socket_directories.is_empty());
        assert_eq!(c.log_file, Some(PathBuf::from("/etc/pgmulti/C:\\logs\\x")));
        assert_eq!(c.mode, Mode::Replication);
    }

    #[test]
    fn empty_path_means_unset() {
        let c = parse_ok("backend_hostname0 = h\nlog_file = ''\nstatus_file = ' '\n");
        assert_eq!(c.log_file, None);
        assert_eq!(c.status_file, None);
    }

    #[test]
    fn star_listen_address_is_kept() {
        let c = parse_ok("backend_hostname0 = h\nlisten_addresses = '*'\n");
        assert_eq!(c.listen_addresses, vec!["*"]);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        assert_eq!(
            parse_err("# x\n= 5\n"),
            "test.conf:2: syntax error: expected \"name = value\""
        );
        assert_eq!(
            parse_err("\nport =\n"),
            "test.conf:2: missing value for parameter \"port\""
        );
        assert_eq!(
            parse_err("port = # nothing\n"),
            "test.conf:1: missing value for parameter \"port\""
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nlog_file = 'abc\n"),
            "test.conf:2: unterminated quoted string in the value of parameter \"log_file\""
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\n\n\nlog_file = a b\n"),
            "test.conf:4: syntax error: unexpected \"b\" after the value of parameter \
             \"log_file\" (quote values that contain spaces)"
        );
    }

    #[test]
    fn unknown_parameter() {
        assert_eq!(
            parse_err("backend_hostname0 = h\n# c\nFoo = 1\n"),
            "test.conf:3: unknown configuration parameter \"foo\""
        );
        assert_eq!(
            parse_err("backend_hostname01 = h\n"),
            "test.conf:1: unknown configuration parameter \"backend_hostname01\""
        );
        assert_eq!(
            parse_err("backend_hostname = h\n"),
            "test.conf:1: unknown configuration parameter \"backend_hostname\""
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nbackend_port128 = 1\n"),
            "test.conf:2: backend index 128 in \"backend_port128\" is out of range (0 to 127)"
        );
        assert_eq!(
            parse_err("backend_port99999999999999999999999 = 1\n"),
            format!(
                "test.conf:1: backend index {} in \"backend_port99999999999999999999999\" \
                 is out of range (0 to 127)",
                usize::MAX
            )
        );
    }

    #[test]
    fn bad_values_name_parameter_value_and_allowed() {
        let cases: &[(&str, &str)] = &[
            ("port = 0", "invalid value for parameter \"port\": \"0\" (expected an integer from 1 to 65535)"),
            ("port = 70000", "invalid value for parameter \"port\": \"70000\" (expected an integer from 1 to 65535)"),
            ("port = abc", "invalid value for parameter \"port\": \"abc\" (expected an integer from 1 to 65535)"),
            ("mode = multi", "invalid value for parameter \"mode\": \"multi\" (allowed: relay, replication, streaming)"),
            ("client_auth = ldap", "invalid value for parameter \"client_auth\": \"ldap\" (allowed: trust, password, md5, scram-sha-256)"),
            ("ssl = maybe", "invalid value for parameter \"ssl\": \"maybe\" (allowed: on, off, true, false, yes, no, 1, 0)"),
            ("backend_sslmode = strict", "invalid value for parameter \"backend_sslmode\": \"strict\" (allowed: disable, allow, prefer, require, verify-ca, verify-full)"),
            ("log_level = verbose", "invalid value for parameter \"log_level\": \"verbose\" (allowed: error, warn, info, debug, trace)"),
            ("log_queue_size = 0", "invalid value for parameter \"log_queue_size\": \"0\" (expected a positive integer)"),
            ("write_ack = later", "invalid value for parameter \"write_ack\": \"later\" (allowed: sync, async)"),
            ("commit_protocol = 3pc", "invalid value for parameter \"commit_protocol\": \"3pc\" (allowed: plain, two_phase)"),
            ("max_client_conn = -1", "invalid value for parameter \"max_client_conn\": \"-1\" (expected a positive integer)"),
            ("backend_port0 = 5432x", "invalid value for parameter \"backend_port0\": \"5432x\" (expected an integer from 1 to 65535)"),
            ("backend_weight0 = -1", "invalid value for parameter \"backend_weight0\": \"-1\" (expected a non-negative number)"),
            ("backend_weight0 = NaN", "invalid value for parameter \"backend_weight0\": \"NaN\" (expected a non-negative number)"),
            ("backend_hostname0 = ''", "invalid value for parameter \"backend_hostname0\": \"\" (expected a host name, IP address or socket directory)"),
            ("listen_addresses = 'a b'", "invalid value for parameter \"listen_addresses\": \"a b\" (expected a comma-separated list of host names or addresses, or '*')"),
            ("connect_timeout = -5", "invalid value for parameter \"connect_timeout\": \"-5\" (a duration must not be negative)"),
        ];
        for (line, message) in cases {
            let text = format!("backend_hostname0 = h\n\n{line}\n");
            assert_eq!(
                parse_err(&text),
                format!("test.conf:3: {message}"),
                "for {line}"
            );
        }
    }

    #[test]
    fn first_bad_line_is_reported_and_overridden_values_are_not_checked() {
        assert_eq!(
            parse_err("backend_hostname0 = h\nport = x\nmode = y\n"),
            "test.conf:2: invalid value for parameter \"port\": \"x\" \
             (expected an integer from 1 to 65535)"
        );
        let c = parse_ok("backend_hostname0 = h\nport = x\nport = 1234\n");
        assert_eq!(c.port, 1234);
    }

    #[test]
    fn missing_backend_is_reported_after_the_last_line() {
        assert_eq!(
            parse_err("port = 1\n# end\n"),
            "test.conf:3: missing required parameter \"backend_hostname0\""
        );
        assert_eq!(
            parse_err(""),
            "test.conf:1: missing required parameter \"backend_hostname0\""
        );
        assert_eq!(
            parse_err("backend_hostname0 = a\nbackend_port1 = 5433\n"),
            "test.conf:3: missing required parameter \"backend_hostname1\""
        );
    }

    #[test]
    fn backend_index_gap() {
        assert_eq!(
            parse_err(
                "backend_hostname0 = a\nbackend_port2 = 1\nbackend_hostname2 = c\n\
                 backend_hostname3 = d\n"
            ),
            "test.conf:2: backend 2 is configured but backend 1 is not; \
             backend indices must be contiguous from 0"
        );
        assert_eq!(
            parse_err("backend_hostname1 = b\n"),
            "test.conf:1: backend 1 is configured but backend 0 is not; \
             backend indices must be contiguous from 0"
        );
        let c = parse_ok("backend_hostname1 = b\nbackend_hostname0 = a\nbackend_hostname2 = c\n");
        let hosts: Vec<_> = c.backends.iter().map(|b| b.hostname.as_str()).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
    }

    #[test]
    fn dependent_settings() {
        assert_eq!(
            parse_err("backend_hostname0 = h\nmax_pool_size = 0\npool_mode = transaction\n"),
            "test.conf:2: max_pool_size = 0 (no pooling) cannot be used with pool_mode = \
             transaction: there it is the number of node connections clients share"
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nclient_auth = scram-sha-256\n"),
            "test.conf:2: client_auth = scram-sha-256 requires auth_file to be set"
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nclient_auth = password\n"),
            "test.conf:2: client_auth = password requires auth_file to be set"
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nssl = on\nssl_key_file = k\n"),
            "test.conf:2: ssl = on requires ssl_cert_file to be set"
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\nssl_cert_file = c\nssl = yes\n"),
            "test.conf:3: ssl = on requires ssl_key_file to be set"
        );
        assert_eq!(
            parse_err("backend_hostname0 = h\n\nbackend_sslmode = verify-ca\n"),
            "test.conf:3: backend_sslmode = verify-ca requires backend_ssl_ca_file to be set"
        );
        let c = parse_ok("backend_hostname0 = h\nauth_file = u\n");
        assert_eq!(c.client_auth, ClientAuth::ScramSha256);
        let c = parse_ok("backend_hostname0 = h\nauth_file = u\nclient_auth = trust\n");
        assert_eq!(c.client_auth, ClientAuth::Trust);
        let c = parse_ok("backend_hostname0 = h\nssl = off\n");
        assert!(!c.ssl);
    }

    #[test]
    fn durations() {
        let ok = |v: &str| parse_duration(v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("3h"), Duration::from_secs(3 * 3600));
        assert_eq!(ok(" 7 s "), Duration::from_secs(7));
        assert_eq!(ok("2147483647"), Duration::from_secs(2147483647));
        assert_eq!(parse_duration("-1"), Err("a duration must not be negative"));
        assert_eq!(
            parse_duration("-0s"),
            Err("a duration must not be negative")
        );
        for bad in ["", "s", "1.5s", "10 sec", "10m", "1d", "abc", "+5"] {
            assert_eq!(parse_duration(bad), Err(DURATION_ALLOWED), "for {bad:?}");
        }
        for huge in ["2147483648", "99999999999999999999999", "9999999999h"] {
            assert!(
                parse_duration(huge).unwrap_err().contains("at most"),
                "for {huge}"
            );
        }
        for d in [0, 1, 999, 1000, 61_000, 120_000, 7_200_000] {
            let d = Duration::from_millis(d);
            assert_eq!(ok(&format_duration(d)), d);
        }
        assert_eq!(
            parse_err("backend_hostname0 = h\nhealth_check_period = '1.5s'\n"),
            format!(
                "test.conf:2: invalid value for parameter \"health_check_period\": \"1.5s\" \
                 ({DURATION_ALLOWED})"
            )
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = "backend_hostname0 = h\nauth_file = 'users.txt'\nlog_file = '../log/p.log'\n";
        let c =
            parse(text, "conf/pgmulti.conf", Path::new("conf")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.auth_file, Some(PathBuf::from("conf/users.txt")));
        assert_eq!(c.log_file, Some(PathBuf::from("conf/../log/p.log")));
        assert_eq!(c.client_auth, ClientAuth::ScramSha256);
    }

    #[test]
    fn load_reads_the_file_and_resolves_against_its_directory() {
        let dir = std::env::temp_dir().join(format!("pgmulti-config-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("p.conf");
        std::fs::write(&path, "backend_hostname0 = h\nstatus_file = st\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.file, path);
        assert_eq!(c.status_file, Some(dir.join("st")));

        let missing = dir.join("nope.conf");
        let err = load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reload_keeps_what_needs_a_restart() {
        let dir = std::env::temp_dir().join(format!("pgmulti-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            load(&p).unwrap()
        };
        let running = write("a.conf", "mode = replication\nbackend_hostname0 = 'h'\nwrite_ack = sync\nport = 6000\nlog_level = info\n");
        let mut new = write("b.conf", "mode = replication\nbackend_hostname0 = 'h'\nbackend_weight0 = 3\nwrite_ack = async\nport = 6001\nlog_level = debug\n");
        assert_eq!(running.reloadable_diff(&new), vec!["port", "write_ack"]);
        new.keep_restart_settings(&running);
        assert_eq!(
            new.write_ack, running.write_ack,
            "said to need a restart: not applied"
        );
        assert_eq!(new.port, 6000);
        assert_eq!(new.backends[0].weight, 3.0, "weights apply live");
        assert_eq!(new.log_level, log::LevelFilter::Debug);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_diff_lists_only_restart_settings() {
        let old = parse_ok("backend_hostname0 = h\n");
        let same = parse_ok(
            "backend_hostname0 = h\nbackend_weight0 = 3\nlog_level = debug\nauth_file = u\n\
             client_auth = md5\nconnect_timeout = 1\nadmin_users = a\nmax_client_conn = 5\n",
        );
        assert!(old.reloadable_diff(&same).is_empty());
        // A node added at the end joins at reload; a changed one needs a restart.
        let added = parse_ok("backend_hostname0 = h\nbackend_hostname1 = i\n");
        assert!(old.reloadable_diff(&added).is_empty());
        let new = parse_ok(
            "backend_hostname0 = g\nbackend_port0 = 6543\nport = 1\nmode = replication\n\
             ssl = on\nssl_cert_file = c\nssl_key_file = k\n",
        );
        assert_eq!(
            old.reloadable_diff(&new),
            [
                "port",
                "mode",
                "backend_hostname",
                "backend_port",
                "ssl",
                "ssl_cert_file",
                "ssl_key_file"
            ]
        );
    }

    #[test]
    fn the_sample_configuration_parses() {
        let c = parse(
            include_str!("../conf/pgmulti.conf"),
            "conf/pgmulti.conf",
            Path::new("conf"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.mode, Mode::Relay);
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].hostname, "127.0.0.1");
        assert_eq!(c.backends[0].port, 5432);
        assert_eq!(c.port, 9999);
    }

    #[test]
    fn message_memory_is_a_size() {
        assert_eq!(
            parse_ok("backend_hostname0 = h\n").max_message_memory,
            256 << 20
        );
        let c = parse_ok("backend_hostname0 = h\nmax_message_memory = '1GB'\n");
        assert_eq!(c.max_message_memory, 1 << 30);
        assert!(
            parse_err("backend_hostname0 = h\nmax_message_memory = much\n").contains("test.conf:2")
        );
    }

    #[test]
    fn streaming_mode_and_standby_lag() {
        let c = parse_ok("backend_hostname0 = h\nmode = streaming\nmax_standby_lag = '4MB'\n");
        assert_eq!((c.mode, c.max_standby_lag), (Mode::Streaming, 4 << 20));
        assert!(c.read_your_writes, "on unless switched off");
        let c = parse_ok("backend_hostname0 = h\nmode = streaming\nmax_standby_delay = '2s'\n");
        assert_eq!(c.max_standby_delay, Duration::from_secs(2));
        assert!(parse_ok("backend_hostname0 = h\n")
            .max_standby_delay
            .is_zero());
        let c = parse_ok("backend_hostname0 = h\nmode = streaming\nread_your_writes = off\n");
        assert!(!c.read_your_writes);
        assert!(
            parse_err("backend_hostname0 = h\nread_your_writes = maybe\n").contains("test.conf:2")
        );
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(
            parse_err("backend_hostname0 = h\nmax_standby_lag = lots\n").contains("test.conf:2")
        );
    }
}
