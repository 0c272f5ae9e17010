//! `purveyor`: the daemon, the command-line client and the embedded host in one binary.
//! This crate is not a library: it parses arguments, sets up logging, and maps errors to
//! the exit codes documented in `--help`.

mod check;
mod dialog;
mod io;
mod remote;
mod render;
mod serve;
mod systemd;
mod top;
mod watch;
mod write;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use purveyor_client::{Client, ClientError, ConnectOptions, Encoding, Mode, Target};
use purveyor_model::{ClassPath, InstanceKey, NamespacePath};

const AFTER_HELP: &str = "\
Examples:
  purveyor get system.load                 one instance, as a table
  purveyor get system.process pid=1 --json one process, as JSON
  purveyor watch system.cpu --interval 2s  CPU time as rates, refreshed
  purveyor ls system                       the classes of the system namespace
  purveyor providers                       every provider and its state
  purveyor set config.setting name=color value=blue
  purveyor call config.setting.rename name=color to=colour
  purveyor events config.setting --filter action=deleted
  purveyor cat backup.tar+etc/hosts        one member of an archive
  purveyor cp notes.txt notes.gz+          through an I/O procedure
  purveyor serve                           run the daemon on the default socket

With no daemon running, commands run a host inside the purveyor process (embedded mode).

Exit codes: 0 success; 1 other failure; 2 usage error (or a request that does not fit
the schema); 3 not found; 4 access denied; 5 provider failed or timed out; 6 daemon
unreachable or protocol error; 7 a limit of the daemon was reached (connections,
subscriptions, I/O operations, memory buffers).";

#[derive(Parser)]
#[command(name = "purveyor", version, about = "Purveyor: a provider host for Linux", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Global {
    /// Talk to the daemon on this socket, with no embedded fallback (PURVEYOR_SOCKET moves the default socket; the fallback stays)
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "embedded")]
    socket: Option<PathBuf>,
    /// Run a host inside this process even if a daemon is running
    #[arg(long, global = true)]
    embedded: bool,
    /// Read provider manifests from this directory (repeatable) [env: PURVEYOR_PROVIDERS]
    #[arg(long = "providers", global = true, value_name = "DIR")]
    provider_dirs: Vec<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Wire encoding to the daemon
    #[arg(long, global = true, value_enum, default_value = "binary", hide = true)]
    encoding: WireEncoding,
    /// More logging on stderr (-v info, -vv debug) [env: PURVEYOR_LOG]
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Never ask anything: a provider that wants a dialog is told "no UI available" (also
    /// when stdin is not a terminal)
    #[arg(long, global = true)]
    no_input: bool,
    /// Load dialog UI modules from this trusted directory (repeatable) [env: PURVEYOR_UI_MODULES, colon-separated]
    #[arg(long = "ui-modules", global = true, value_name = "DIR")]
    ui_modules: Vec<PathBuf>,
    /// Talk to a daemon on another machine over TLS: HOST:PORT (docs/remote.md) [env: PURVEYOR_REMOTE]
    #[arg(long, global = true, value_name = "HOST:PORT", conflicts_with_all = ["socket", "embedded"])]
    remote: Option<String>,
    /// The CA that issued the remote daemon's certificate [env: PURVEYOR_TLS_CA]
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This client's certificate for --remote (PEM) [env: PURVEYOR_TLS_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM) [env: PURVEYOR_TLS_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WireEncoding {
    Binary,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List classes and their schemas
    #[command(
        after_help = "Examples:\n  purveyor ls\n  purveyor ls system\n  purveyor ls system.cpu      the schema of one class"
    )]
    Ls {
        /// A namespace (system) or a class (system.cpu)
        namespace: Option<String>,
        /// Show every class's properties
        #[arg(short, long)]
        long: bool,
    },
    /// Show the instances of a class
    #[command(
        after_help = "Examples:\n  purveyor get system.load\n  purveyor get system.net interface=lo\n  purveyor get system.process pid=1 --json"
    )]
    Get {
        class: String,
        /// Select instances by property: NAME=VALUE
        selectors: Vec<String>,
    },
    /// Run a SQL query over classes: each class a table, each property a column
    #[command(after_help = "Examples:
  purveyor query \"SELECT pid, name, rss FROM system.process ORDER BY rss DESC LIMIT 5\"
  purveyor query \"SELECT name, count(*) FROM system.process GROUP BY name\" --json
  purveyor query \"SELECT * FROM system.process WHERE pid = 1\" --plan

A class NS.NAME is written as it is (SQLite reads it as schema NS, table NAME), or
quoted (\"NS.NAME\"). Equality on key properties asks the class for those instances only;
--plan shows what each class was asked. See docs/query.md.")]
    Query {
        /// The SQL: one SELECT (or WITH ... SELECT)
        sql: String,
        /// Also print what each class was asked
        #[arg(long)]
        plan: bool,
    },
    /// Refresh a class's instances; counters are shown as rates per second
    #[command(
        after_help = "Examples:\n  purveyor watch system.cpu\n  purveyor watch system.net interface=lo --interval 500ms --count 5 --json"
    )]
    Watch {
        class: String,
        selectors: Vec<String>,
        /// Time between samples
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes
        #[arg(long)]
        count: Option<u64>,
    },
    /// Create or update an instance: its key properties and the properties to set
    #[command(
        after_help = "Examples:\n  purveyor set config.setting name=color value=blue\n  purveyor set config.setting name=retries type=i64 value=3 --json"
    )]
    Set {
        class: String,
        /// NAME=VALUE for the key properties and each property to set
        #[arg(required = true)]
        assignments: Vec<String>,
    },
    /// Delete an instance, named by its key properties
    #[command(after_help = "Examples:\n  purveyor delete config.setting name=color")]
    Delete {
        class: String,
        /// NAME=VALUE for each key property
        key: Vec<String>,
    },
    /// Call a method: key properties name the instance, the rest are arguments
    #[command(
        after_help = "Examples:\n  purveyor call config.setting.rename name=color to=colour\n  purveyor call config.setting.transfer name=a to=b amount=5 --json"
    )]
    Call {
        /// CLASS.METHOD
        method: String,
        /// NAME=VALUE for the key properties and the method's parameters
        args: Vec<String>,
    },
    /// Print a class's events as they happen
    #[command(
        after_help = "Examples:\n  purveyor events config.setting\n  purveyor events config.setting --event changed --filter action=deleted\n  purveyor events config.setting --filter 'version>=3' --count 10 --json\n  purveyor events system.process --changes --within 1s --filter name=sshd\n\nFilters: NAME=VALUE, NAME!=VALUE, NAME<VALUE, NAME<=VALUE, NAME>VALUE, NAME>=VALUE; all must hold.\nWith --changes, any readable class: the host polls it every --within and prints each\ninstance created, deleted or modified (the properties that changed, old -> new); filters\nare on the instance's properties. A counter that moves is a change only with --counters."
    )]
    Events {
        class: String,
        /// Only this event (default: all of the class's events)
        #[arg(long)]
        event: Option<String>,
        /// A condition on the event's properties (repeatable)
        #[arg(long = "filter", value_name = "CONDITION")]
        filters: Vec<String>,
        /// Stop after this many events
        #[arg(long)]
        count: Option<u64>,
        /// Stop when no event arrives for this long
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Instances created, deleted and modified, for any class (the host polls it)
        #[arg(long, conflicts_with = "event")]
        changes: bool,
        /// With --changes: how often the class is polled
        #[arg(long, default_value = "1s", value_parser = parse_duration, requires = "changes")]
        within: Duration,
        /// With --changes: a counter that moves is a modification too
        #[arg(long, requires = "changes")]
        counters: bool,
    },
    /// List every registered provider with its state and statistics, or enable one
    #[command(
        after_help = "Examples:\n  purveyor providers\n  purveyor providers --json\n  purveyor providers enable crashy     after a quarantine"
    )]
    Providers {
        #[command(subcommand)]
        action: Option<ProvidersAction>,
    },
    /// Serve isolated provider libraries over stdin/stdout (started by the daemon)
    #[command(hide = true)]
    Worker,
    /// Run an external provider in its strict sandbox (started by the daemon)
    #[command(hide = true)]
    SandboxExec {
        program: std::ffi::OsString,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the daemon
    #[command(
        after_help = "Examples:\n  purveyor serve\n  purveyor serve --socket /tmp/p.sock --providers ./providers\n  purveyor serve --clear-after counter=30s --clear-after instance=1m\n  purveyor serve --limit io.mem_per_user=16MiB --limit io.mem_idle=5m\n  purveyor serve --http 9464                       JSON API and /metrics on 127.0.0.1:9464\n  purveyor serve --http 0.0.0.0:9464 --http-config /etc/purveyor/http.toml\n  purveyor serve --listen tls://0.0.0.0:7443       remote clients over TLS (certificates in /etc/purveyor/remote.toml)"
    )]
    Serve {
        /// Let the socket's group connect (mode 0660 instead of 0600)
        #[arg(long)]
        group_access: bool,
        /// Async runtime threads (default: one per two CPUs; at least two when a provider library is hosted in-daemon)
        #[arg(long)]
        threads: Option<usize>,
        /// Idle-unload default for providers of KIND whose manifest gives no clear_after
        /// (KIND=DURATION, repeatable; kinds: instance 5m, counter 10m, event 10m, io 1m)
        #[arg(long, value_name = "KIND=DURATION")]
        clear_after: Vec<String>,
        /// The access policy (docs/security.md) [default: /etc/purveyor/access.toml if it exists, else the built-in defaults]
        #[arg(long, value_name = "FILE")]
        access: Option<PathBuf>,
        /// Quarantine a provider whose process crashes this many times within a minute (0: never)
        #[arg(long, value_name = "N", default_value = "3")]
        quarantine_after: u32,
        /// Events queued for one client before more are dropped (and reported as lost)
        #[arg(long, value_name = "N", default_value = "4096")]
        event_queue: usize,
        /// Set a limit on what clients can make the daemon hold (NAME=VALUE, repeatable;
        /// docs/security.md "Limits": io.mem_per_user 64MiB, io.mem_total 256MiB, io.mem_idle 15m)
        #[arg(long, value_name = "NAME=VALUE")]
        limit: Vec<String>,
        /// Also serve HTTP (JSON API, /metrics, /healthz, /readyz, events; docs/http.md) on ADDR: a bare PORT is on loopback; https://ADDR for HTTPS with the certificate of --remote-config
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// The HTTP gateway's configuration [default: /etc/purveyor/http.toml if it exists]
        #[arg(long, value_name = "FILE", requires = "http")]
        http_config: Option<PathBuf>,
        /// Also serve the protocol to other machines over TLS 1.3 on tls://ADDR:PORT (repeatable; a bare PORT is on loopback; docs/remote.md)
        #[arg(long, value_name = "tls://ADDR:PORT")]
        listen: Vec<String>,
        /// Certificates and user mapping for --listen and --http https://… [default: /etc/purveyor/remote.toml]
        #[arg(long, value_name = "FILE")]
        remote_config: Option<PathBuf>,
    },
    /// I/O procedures: list the codes the host serves
    #[command(after_help = "Examples:\n  purveyor io ls\n  purveyor io ls --json")]
    Io {
        #[command(subcommand)]
        action: IoAction,
    },
    /// Print streams to stdout: plain files or procedure names (file.EXT+element)
    #[command(
        after_help = "Examples:\n  purveyor cat /etc/hostname\n  purveyor cat backup.tar+etc/hosts\n  purveyor cat logs.gz+ | grep error\n  purveyor cat report.xor+             through a global procedure a provider installs"
    )]
    Cat {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Copy a stream: either side may be a procedure name (file.EXT+element)
    #[command(
        after_help = "Examples:\n  purveyor cp notes.txt notes.gz+           compress\n  purveyor cp backup.tar+etc/hosts hosts    extract one member\n  purveyor cp hosts backup.tar+etc/hosts    append a member\n  purveyor cp secret.txt secret.xor+        through a provider's procedure"
    )]
    Cp {
        src: String,
        dst: String,
        /// No progress line
        #[arg(long, short)]
        quiet: bool,
    },
    /// Say which host is in use (daemon or embedded) and how it is doing
    Status,
    /// Providers by what they cost — CPU, memory, calls, errors, latency — refreshed like top
    #[command(
        after_help = "Keys: c CPU, m memory, n calls, e errors, l latency (sort, largest first); q quit.\nCPU% is of one CPU over the interval: a provider in its own process is charged its\nprocess's CPU, one on the daemon's threads its calls' thread CPU (docs/lifecycle.md).\n\nExamples:\n  purveyor top\n  purveyor top --sort memory --interval 2\n  purveyor top --once --json          two samples a second apart, for scripts"
    )]
    Top {
        /// Seconds between samples
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one view (two samples an interval apart) and exit; with --json, as JSON
        #[arg(long)]
        once: bool,
        /// The column to sort by
        #[arg(long, value_enum, default_value_t = top::SortKey::Cpu)]
        sort: top::SortKey,
    },
    /// Make the daemon re-read its manifests, access policy and http.toml, without a restart
    #[command(
        after_help = "All or nothing: a file with an error is named with its line, and the configuration\nin force keeps serving. Connections stay open; unchanged providers keep running;\nchanged and removed ones are released after their calls in flight. The same as\nSIGHUP and `systemctl reload purveyor`. Root and the daemon's user only.\n\nExit codes: 0 reloaded, 2 refused (the reason on stderr), 4 not allowed, 1 no daemon.\n\nExamples:\n  purveyor reload\n  purveyor reload --json\n  sudo systemctl reload purveyor"
    )]
    Reload,
    /// Be this user's UI agent: show the dialogs providers open on their own
    #[command(
        after_help = "Answer a dialog by typing a button's number (or name) and Enter.\n\nDialogs from providers in isolated workers come on a direct channel to the worker\n(docs/dialogs.md, \"Direct channels\"); PURVEYOR_DIRECT_DIALOGS=0 takes them through\nthe daemon.\n\nExamples:\n  purveyor agent\n  purveyor agent --ui-modules /usr/lib/purveyor/ui      with trusted UI modules\n  (in another terminal) purveyor call phone.line dial number=555-0100"
    )]
    Agent,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        after_help = "Examples:\n  purveyor completions bash > /etc/bash_completion.d/purveyor\n  purveyor completions zsh > ~/.zfunc/_purveyor\n  purveyor completions fish > ~/.config/fish/completions/purveyor.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages: purveyor(1) and one per subcommand (purveyor-get(1), …)
    #[command(
        after_help = "Examples:\n  purveyor man /usr/share/man/man1\n  purveyor man ./man && man ./man/purveyor-query.1"
    )]
    Man {
        /// The directory to write them to (made if missing)
        dir: PathBuf,
    },
    /// Validate provider manifests
    #[command(
        after_help = "Examples:\n  purveyor check                 the configured directories\n  purveyor check ./providers"
    )]
    Check {
        /// A directory of manifests, or one manifest file (default: the configured directories)
        path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IoAction {
    /// The installed codes in lookup order: scope, provider, open streams
    Ls,
}

#[derive(Subcommand)]
enum ProvidersAction {
    /// Let a quarantined provider load again
    Enable { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            eprintln!("purveyor: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Agent => {
            dialog::check_agent(global.no_input)?;
            // An agent takes dialogs of providers in workers on direct channels, unless
            // PURVEYOR_DIRECT_DIALOGS=0.
            let direct = std::env::var_os("PURVEYOR_DIRECT_DIALOGS").is_none_or(|v| v != "0");
            let client = connect_with(&global, false, direct)?;
            dialog::run_agent(client, ui_module_dirs(&global)).map(|()| ExitCode::SUCCESS)
        }
        Command::Serve {
            group_access,
            threads,
            clear_after,
            access,
            quarantine_after,
            event_queue,
            limit,
            http,
            http_config,
            listen,
            remote_config,
        } => serve::run(
            &global,
            serve::Options {
                group_access,
                threads,
                clear_after: &clear_after,
                access: access.as_deref(),
                quarantine_after,
                event_queue,
                limits: &limit,
                http: http.as_deref(),
                http_config: http_config.as_deref(),
                listen: &listen,
                remote_config: remote_config.as_deref(),
            },
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Set { class, assignments } => {
            write::set(&mut connect(&global)?, global.json, &class, &assignments)
        }
        Command::Delete { class, key } => {
            write::delete(&mut connect(&global)?, global.json, &class, &key)
        }
        Command::Call { method, args } => {
            write::call(&mut connect(&global)?, global.json, &method, &args)
        }
        Command::Events {
            class,
            filters,
            count,
            timeout,
            changes: true,
            within,
            counters,
            ..
        } => write::changes(
            &mut connect(&global)?,
            global.json,
            write::ChangesArgs {
                class: &class,
                filters: &filters,
                count,
                timeout,
                within,
                counters,
            },
        ),
        Command::Events {
            class,
            event,
            filters,
            count,
            timeout,
            ..
        } => write::events(
            &mut connect(&global)?,
            global.json,
            write::EventsArgs {
                class: &class,
                event: event.as_deref(),
                filters: &filters,
                count,
                timeout,
            },
        ),
        Command::Check { path } => check::run(&global, path.as_deref()),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "purveyor", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Io {
            action: IoAction::Ls,
        } => io::ls(&mut connect(&global)?, global.json),
        Command::Cat { names } => io::cat(&mut connect(&global)?, &names),
        Command::Cp { src, dst, quiet } => io::cp(&mut connect(&global)?, &src, &dst, quiet),
        Command::Ls { namespace, long } => {
            let mut client = connect(&global)?;
            ls(&mut client, &global, namespace.as_deref(), long)
        }
        Command::Get { class, selectors } => {
            let mut client = connect(&global)?;
            get(&mut client, &global, &class, &selectors)
        }
        Command::Query { sql, plan } => {
            let rows = connect(&global)?.query(&sql, plan)?;
            if global.json {
                print_json(&render::rows_json(&rows))?;
            } else {
                out(&render::rows(&rows))?;
                if plan {
                    let mut text = String::from("\nplan:\n");
                    for step in &rows.plan {
                        text.push_str(&format!("  {step}\n"));
                    }
                    out(&text)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            class,
            selectors,
            interval,
            count,
        } => {
            let mut client = connect(&global)?;
            let class = ClassPath::new(class)?;
            let schema = client.describe(&class)?;
            let selector = InstanceKey::parse(&schema, &selectors)?;
            watch::run(
                &mut client,
                &schema,
                &selector,
                interval,
                count,
                global.json,
            )
        }
        Command::Worker => Ok(ExitCode::from(
            purveyor_hosting::worker::run().clamp(0, 255) as u8,
        )),
        Command::SandboxExec { program, args } => Ok(ExitCode::from(
            purveyor_hosting::sandbox::exec(&program, &args).clamp(0, 255) as u8,
        )),
        Command::Providers {
            action: Some(ProvidersAction::Enable { name }),
        } => {
            let name = purveyor_model::ProviderName::new(name)?;
            let mut client = connect(&global)?;
            let providers = client.enable_provider(&name)?;
            if global.json {
                print_json(&providers)?;
            } else {
                out(&format!(
                    "provider {name} enabled; it loads on its next request\n"
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Providers { action: None } => {
            let mut client = connect(&global)?;
            let providers = client.providers()?;
            if global.json {
                print_json(&providers)?;
            } else {
                out(&render::providers(&providers, &provider_costs(&mut client)))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Top {
            interval,
            once,
            sort,
        } => {
            if !(0.1..=3600.0).contains(&interval) {
                anyhow::bail!("--interval {interval}: expected 0.1 to 3600 seconds");
            }
            let interval = std::time::Duration::from_secs_f64(interval);
            let mut client = connect_with(&global, false, false)?;
            if once || !std::io::stdout().is_terminal() {
                top::once(&mut client, interval, sort, global.json)?;
            } else {
                top::live(&mut client, interval, sort)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let mut client = connect_with(&global, false, false)?;
            if matches!(client.mode(), Mode::Embedded) {
                anyhow::bail!(
                    "no daemon at {}: nothing to reload",
                    global_socket(&global).display()
                );
            }
            let report = client.reload()?;
            if global.json {
                print_json(&report)?;
            } else {
                out(&render::reloaded(&report))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let mut client = connect(&global)?;
            let status = client.status()?;
            if global.json {
                print_json(&status)?;
            } else {
                out(&render::status(
                    &status,
                    client.mode(),
                    &global_socket(&global),
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ls(client: &mut Client, global: &Global, arg: Option<&str>, long: bool) -> Result<ExitCode> {
    let namespace = arg.map(NamespacePath::new).transpose()?;
    let list = match client.list_classes(namespace.as_ref()) {
        Ok(list) => list,
        // `ls system.cpu`: a class, not a namespace.
        Err(ClientError::NotFound { .. }) if arg.is_some_and(|a| ClassPath::new(a).is_ok()) => {
            let class = ClassPath::new(arg.unwrap_or_default())?;
            let schema = client.describe(&class)?;
            purveyor_protocol::ClassList {
                classes: vec![schema],
                problems: vec![],
            }
        }
        Err(e) => return Err(e.into()),
    };
    let single = list.classes.len() == 1 && arg == Some(list.classes[0].path().as_str());
    if global.json {
        print_json(&list)?;
    } else if long || single {
        for schema in &list.classes {
            out(&render::schema(schema))?;
        }
    } else {
        out(&render::classes(&list.classes))?;
    }
    for problem in &list.problems {
        eprintln!("purveyor: {problem}");
    }
    Ok(if list.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(5)
    })
}

fn get(
    client: &mut Client,
    global: &Global,
    class: &str,
    selectors: &[String],
) -> Result<ExitCode> {
    let class = ClassPath::new(class)?;
    let schema = client.describe(&class)?;
    let selector = InstanceKey::parse(&schema, selectors)?;
    let instances = client.enumerate(&class, &selector)?;
    if instances.is_empty() && !selector.is_empty() {
        return Err(ClientError::NotFound {
            message: format!("no instance of {class} with {selector}"),
        }
        .into());
    }
    if global.json {
        print_json(&render::instances_json(&schema, &instances))?;
    } else {
        out(&render::instances(&schema, &instances))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `purveyor.1` and `purveyor-SUBCOMMAND.1` for every visible subcommand into `dir`.
fn man_pages(dir: &std::path::Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    let mut written = 0;
    let mut write = |name: String, page: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
        Ok(())
    };
    write("purveyor".into(), command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("purveyor-{}", sub.get_name());
        // clap names are `'static`; this runs once per page of a one-shot command.
        let page = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        write(name, page)?;
    }
    eprintln!("wrote {written} manual pages to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Connects; the client shows in-call dialogs in the terminal unless `--no-input` is
/// given or stdin is not a terminal (then providers are told "no UI available").
fn connect(global: &Global) -> Result<Client> {
    let ui = !global.no_input && std::io::stdin().is_terminal();
    let mut client = connect_with(global, ui, false)?;
    if ui {
        client.set_dialog_ui(dialog::command_ui(ui_module_dirs(global)));
    }
    Ok(client)
}

/// The trusted UI module directories: `--ui-modules`, then `PURVEYOR_UI_MODULES`.
fn ui_module_dirs(global: &Global) -> Vec<PathBuf> {
    let mut dirs = global.ui_modules.clone();
    if let Some(env) = std::env::var_os("PURVEYOR_UI_MODULES") {
        dirs.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

fn connect_with(global: &Global, ui: bool, direct_dialogs: bool) -> Result<Client> {
    let remote = if global.embedded || global.socket.is_some() {
        None
    } else {
        purveyor_client::RemoteSettings::resolve(purveyor_client::RemoteFlags {
            address: global.remote.clone(),
            ca: global.tls_ca.clone(),
            certificate: global.tls_cert.clone(),
            key: global.tls_key.clone(),
        })?
    };
    let target = if let Some(remote) = remote {
        Target::Remote(remote)
    } else if global.embedded {
        Target::Embedded
    } else if let Some(socket) = &global.socket {
        Target::Socket(socket.clone())
    } else {
        Target::Auto
    };
    let mut options = ConnectOptions::default()
        .target(target)
        .client_name(concat!("purveyor-cli/", env!("CARGO_PKG_VERSION")))
        .encoding(match global.encoding {
            WireEncoding::Binary => Encoding::Binary,
            WireEncoding::Json => Encoding::Json,
        })
        .ui(ui)
        .direct_dialogs(direct_dialogs);
    if !global.provider_dirs.is_empty() {
        options = options.provider_dirs(global.provider_dirs.clone());
    }
    let client = Client::connect(&options)?;
    match client.mode() {
        Mode::Daemon { socket } => tracing::debug!(socket = %socket.display(), "using the daemon"),
        Mode::Remote { address } => tracing::debug!(%address, "using a remote daemon"),
        Mode::Embedded => {}
    }
    Ok(client)
}

/// Each provider's CPU seconds and resident bytes, from `purveyor.provider` (empty if the
/// host does not say: an older daemon).
fn provider_costs(client: &mut Client) -> std::collections::HashMap<String, (f64, Option<u64>)> {
    let Ok(class) = ClassPath::new("purveyor.provider") else {
        return Default::default();
    };
    let rows = client
        .enumerate(&class, &purveyor_model::InstanceKey::new())
        .unwrap_or_default();
    rows.iter()
        .filter_map(|i| {
            let name = match i.get("name") {
                Some(purveyor_model::Value::String(n)) => n.clone(),
                _ => return None,
            };
            let cpu = match i.get("cpu_seconds") {
                Some(purveyor_model::Value::F64(c)) => *c,
                _ => return None,
            };
            let rss = match i.get("rss_bytes") {
                Some(purveyor_model::Value::U64(b)) => Some(*b),
                _ => None,
            };
            Some((name, (cpu, rss)))
        })
        .collect()
}

fn global_socket(global: &Global) -> PathBuf {
    global
        .socket
        .clone()
        .unwrap_or_else(purveyor_protocol::default_socket_path)
}

/// Writes to stdout; a closed pipe surfaces as an error that `main` turns into exit 0.
fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    out(&text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write it like 1s or 500ms)"))?;
    if d < Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(d)
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::filter::LevelFilter;
    let default = match (&cli.command, cli.global.verbose) {
        (_, 2..) => LevelFilter::DEBUG,
        (_, 1) | (Command::Serve { .. }, _) => LevelFilter::INFO,
        _ => LevelFilter::WARN,
    };
    let level = std::env::var("PURVEYOR_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(default);
    // The daemon under systemd logs to the journal with structured fields; anything
    // else, or a journal that cannot be reached, to stderr as text.
    if matches!(cli.command, Command::Serve { .. }) && systemd::under_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                tracing_subscriber::registry()
                    .with(level)
                    .with(journal.with_syslog_identifier("purveyor".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("purveyor: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<purveyor_model::KeyError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::NotFound { .. } => 3,
                ClientError::AccessDenied { .. } => 4,
                // The request does not fit the schema: the user's to fix, like a usage error.
                ClientError::InvalidRequest { .. } => 2,
                ClientError::ProviderFailed { .. } | ClientError::Timeout { .. } => 5,
                ClientError::Connect { .. } | ClientError::Protocol { .. } | ClientError::Io(_) => {
                    6
                }
                ClientError::LimitExceeded { .. } => 7,
                _ => 1,
            };
        }
    }
    1
}
