//! `pgmulti`: command line, configuration, logging, listeners, then the event loop.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pgmulti::auth::userlist::UserList;
use pgmulti::cluster::{self, Cluster};
use pgmulti::config::{self, CommitProtocol, Config, Mode};
use pgmulti::net::listener;
use pgmulti::net::tls::{ClientTls, NodeTls};
use pgmulti::reactor::context::Shared;
use pgmulti::reactor::log_queue::{self, LogDrain};
use pgmulti::reactor::Reactor;
use pgmulti::replication::two_phase;

const USAGE: &str = "\
pgmulti — PostgreSQL middleware: relay with protocol trace, multi-main replication

Usage:
  pgmulti [-f FILE]            run with FILE (default conf/pgmulti.conf)
  pgmulti --check [-f FILE]    validate FILE; exit 0, or 1 with FILE:LINE: message
  pgmulti --version            print the version
Options:
  -f, --config FILE            configuration file
  -h, --help                   this help
";

fn main() -> ExitCode {
    let mut file = PathBuf::from("conf/pgmulti.conf");
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-f" | "--config" => match args.next() {
                Some(f) => file = PathBuf::from(f),
                None => return usage_error(&format!("{arg} needs a file name")),
            },
            "--check" => check = true,
            "--version" | "-V" => {
                println!("pgmulti {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => match other.strip_prefix("--config=") {
                Some(f) => file = PathBuf::from(f),
                None => return usage_error(&format!("unknown argument \"{other}\"")),
            },
        }
    }
    let config = match config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let parts = match build_parts(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    if check {
        println!("{}: configuration is valid", file.display());
        return ExitCode::SUCCESS;
    }
    match run(config, parts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgmulti: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("pgmulti: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Everything derived from a config that can fail: users, TLS, the node table.
struct Parts {
    users: UserList,
    client_tls: Option<ClientTls>,
    node_tls: NodeTls,
    cluster: Cluster,
}

fn build_parts(config: &Config) -> Result<Parts, String> {
    let users = match &config.auth_file {
        Some(p) => UserList::load(p)?,
        None => UserList::default(),
    };
    let client_tls = match (config.ssl, &config.ssl_cert_file, &config.ssl_key_file) {
        (true, Some(cert), Some(key)) => Some(ClientTls::new(cert, key)?),
        (true, _, _) => return Err("ssl = on needs ssl_cert_file and ssl_key_file".into()),
        _ => None,
    };
    let node_tls = NodeTls::new(
        config.backend_sslmode,
        config.backend_ssl_ca_file.as_deref(),
    )?;
    let mut cluster = Cluster::new(resolve_nodes(config)?, config.status_file.clone())?;
    cluster.failover_command = config.failover_command.clone();
    cluster.follow_primary_command = config.follow_primary_command.clone();
    cluster.streaming = config.mode == Mode::Streaming;
    Ok(Parts {
        users,
        client_tls,
        node_tls,
        cluster,
    })
}

/// Node host names are resolved here, at load time, so the loop never waits on DNS.
fn resolve_nodes(config: &Config) -> Result<Vec<cluster::Node>, String> {
    config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let addr = (b.hostname.as_str(), b.port)
                .to_socket_addrs()
                .map_err(|e| format!("backend_hostname{i} \"{}\": {e}", b.hostname))?
                .next()
                .ok_or_else(|| format!("backend_hostname{i} \"{}\": no address", b.hostname))?;
            Ok(cluster::Node::new(
                i as u8,
                b.hostname.clone(),
                b.data_directory
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                addr,
                b.weight,
            ))
        })
        .collect()
}

fn run(config: Config, parts: Parts) -> Result<(), String> {
    let mut log = log_queue::init(
        config.log_queue_size,
        config.log_level,
        config.log_file.as_deref(),
    )?;
    let listeners = listener::bind_all(
        &config.listen_addresses,
        config.port,
        &config.unix_socket_directories,
    )?;
    let metrics_listeners = match config.metrics_port {
        0 => Vec::new(),
        port => listener::bind_all(&config.listen_addresses, port, &[])?,
    };
    log::info!(
        "pgmulti {} starting: mode {}, {} node(s), config {}",
        env!("CARGO_PKG_VERSION"),
        config.mode.as_str(),
        config.backends.len(),
        config.file.display()
    );
    let mut two_phase = None;
    if config.mode == Mode::Replication && config.commit_protocol == CommitProtocol::TwoPhase {
        // Before any client: nodes must allow PREPARE TRANSACTION, and what a previous run
        // left prepared is finished.
        let password = cluster::direct::own_password(&config, &parts.users);
        // Microseconds: two runs started within one second must not share identifiers.
        let (secs, micros) = pgmulti::timestamp::now();
        let epoch = secs * 1_000_000 + u64::from(micros);
        let checked = two_phase::check_and_recover(
            &config,
            &parts.cluster,
            &parts.node_tls,
            password.as_deref(),
            epoch,
        )
        .and_then(|prefix| two_phase::DecisionLog::open(&config.two_phase_log, &prefix, epoch));
        match checked {
            Ok(l) => two_phase = Some(l),
            Err(e) => {
                log::error!("{e}");
                log.drain();
                return Err(e);
            }
        }
    }
    let mut shared = Shared::new(
        config,
        parts.users,
        parts.client_tls,
        parts.node_tls,
        parts.cluster,
    );
    shared.two_phase = two_phase;
    let mut reactor = Reactor::new(listeners, metrics_listeners, shared, log, reload)
        .map_err(|e| e.to_string())?;
    reactor.run().map_err(|e| e.to_string())
}

/// SIGHUP: re-read the file; apply what can change live, name what needs a restart. A bad
/// file changes nothing.
fn reload(shared: &mut Shared, log: &mut LogDrain) {
    let path: &Path = &shared.config.file.clone();
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload failed, keeping the running configuration: {e}");
            return;
        }
    };
    let users = match &new.auth_file {
        Some(p) => match UserList::load(p) {
            Ok(u) => u,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        },
        None => UserList::default(),
    };
    let restart = shared.config.reloadable_diff(&new);
    if !restart.is_empty() {
        log::warn!(
            "reload: changes to {} need a restart and were not applied",
            restart.join(", ")
        );
    }
    // Reopen the (unchanged) log file so that SIGHUP after log rotation writes to the new one.
    if let Err(e) = log.reopen(shared.config.log_file.as_deref()) {
        log::error!("reload: {e}");
    }
    log::set_max_level(new.log_level);
    let mut applied = new.clone();
    applied.keep_restart_settings(&shared.config);
    shared.cluster.failover_command = new.failover_command.clone();
    shared.cluster.follow_primary_command = new.follow_primary_command.clone();
    // Read weights change live; the node list itself needs a restart.
    for (node, b) in shared.cluster.nodes.iter_mut().zip(&applied.backends) {
        node.weight = b.weight;
    }
    // Nodes added at the end of the list join detached (RECOVER NODE or ATTACH NODE).
    let known = shared.config.backends.len();
    if new.backends.len() > known
        && !restart.contains(&"backend_hostname")
        && !restart.contains(&"backend_port")
    {
        match resolve_nodes(&new) {
            Ok(nodes) => {
                for node in nodes.into_iter().skip(known) {
                    applied
                        .backends
                        .push(new.backends[node.id as usize].clone());
                    shared.cluster.add(node);
                }
            }
            Err(e) => log::error!("reload: new nodes not added: {e}"),
        }
    }
    shared.config = applied;
    shared.users = users;
    log::info!(
        "configuration reloaded from {} (log_level {})",
        path.display(),
        new.log_level
    );
}
