//! PostgreSQL for the tests: a fresh, empty database for each test.
//!
//! Where the databases live:
//!
//! - `LLMJOBS_TEST_PG_URL` set (a `postgres://` URL, e.g.
//!   `postgres://postgres@127.0.0.1:5432/test`): on that server. Its database serves as the
//!   maintenance database for `CREATE DATABASE`; the role must be allowed to create databases.
//! - Otherwise on a throwaway cluster that this test process starts from the system's PostgreSQL
//!   binaries (the highest version under `/usr/lib/postgresql/*/bin`, else `initdb` found on
//!   `PATH`): `initdb` into a temporary folder, trust authentication, superuser `postgres`,
//!   listening on a free port of 127.0.0.1 and on a unix socket in that folder. The machine's own
//!   PostgreSQL service is never used. One cluster per test process, started by the first test
//!   that asks and shared by the others; each test gets its own database
//!   (`llmjobs_test_<random>`, created from `template0`).
//!
//! PostgreSQL refuses to run as root: when the tests run as root (as CI does), `initdb` and the
//! server run as the `postgres` system user (through `runuser`, else `su`), in a folder owned by
//! that user.
//!
//! Durability: the throwaway cluster runs with `fsync = off` and `full_page_writes = off`. These
//! matter only if the machine itself crashes, which would take the test run down with it; a
//! crash of the server or of a client process still loses nothing that was committed.
//! `synchronous_commit` keeps its default (`on`), since turning it off could lose acknowledged
//! commits when the server process dies, which a test could observe. Benchmarks must not use this
//! cluster: they should run against a server with its default settings.
//!
//! Cleanup: a statically held value is never dropped and this workspace forbids `unsafe` (so no
//! `atexit`), so a small watchdog shell process does it. It reads its stdin, a pipe whose only
//! write end this process holds; the kernel closes that end when this process exits, however it
//! exits (normally, by a panic, by SIGKILL), and the watchdog then stops the cluster
//! (`pg_ctl stop -m immediate`) and removes its folder, or, on a server of
//! `LLMJOBS_TEST_PG_URL`, drops the databases this process created. The watchdog and the server
//! run in process groups of their own, so a Ctrl-C that kills the tests does not kill them
//! before they clean up. `LLMJOBS_TEST_PG_KEEP=1` skips the cleanup, to look at a cluster after a
//! run (its location is printed).
//!
//! When no PostgreSQL can be had, [`pg_url`] prints `PostgreSQL tests skipped: <why>` once to
//! stderr and returns `None`, and the test should return early; with `LLMJOBS_REQUIRE_PG=1` (set
//! by CI) it panics with the reason instead.
//!
//! ```no_run
//! # async fn a_test() {
//! let Some(url) = llmjobs_testkit::pg::pg_url().await else {
//!     return; // no PostgreSQL on this machine: skipped
//! };
//! // `url` names a new, empty database, e.g. postgres://postgres@127.0.0.1:41234/llmjobs_test_…
//! # }
//! ```

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const URL_VAR: &str = "LLMJOBS_TEST_PG_URL";
const REQUIRE_VAR: &str = "LLMJOBS_REQUIRE_PG";
const KEEP_VAR: &str = "LLMJOBS_TEST_PG_KEEP";

/// Whether PostgreSQL is required (`LLMJOBS_REQUIRE_PG=1`, as CI sets): then a test that cannot
/// have it fails instead of being skipped.
pub fn require_pg() -> bool {
    env_flag(REQUIRE_VAR)
}

/// The URL of a new, empty database, or `None` (after printing why, once) when no PostgreSQL can
/// be had here and [`require_pg`] is false.
///
/// The first call in a process starts the throwaway cluster (about a second); later calls only
/// create a database. The database lasts until the process exits.
///
/// # Panics
///
/// When PostgreSQL is unavailable and [`require_pg`] is true, or when the server fails to create
/// the database.
pub async fn pg_url() -> Option<String> {
    let result = tokio::task::spawn_blocking(fresh_database)
        .await
        .expect("the PostgreSQL harness thread panicked");
    settle(result)
}

/// [`pg_url`] for code that is not async (or runs outside a Tokio runtime). Blocks while the
/// cluster starts and the database is created.
///
/// # Panics
///
/// As [`pg_url`].
pub fn pg_url_blocking() -> Option<String> {
    settle(fresh_database())
}

/// Runs `sql` on the database at `url` with `psql` (unaligned, tuples only, stopping at the first
/// error) and returns what it printed, without the trailing newline: `psql(&url, "SELECT 1")` is
/// `"1"`.
///
/// # Panics
///
/// When no `psql` can be found or the statement fails.
pub fn psql(url: &str, sql: &str) -> String {
    try_psql(url, sql).unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// As [`psql`], but says why instead of panicking: no `psql` found, the server unreachable, the
/// statement failed.
pub fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let psql = match SERVER.get() {
        Some(Ok(server)) => server.psql.clone(),
        _ => find_psql().ok_or("no psql binary found (install PostgreSQL's client)")?,
    };
    run_psql(&psql, url, sql)
}

/// Stops this process's throwaway cluster at once (`pg_ctl stop -m immediate`, as a crash of
/// the server would), and returns once it is down; [`start_cluster`] starts it again on the same
/// port, with every committed row. Every test of the process shares the cluster, so a test that
/// stops it belongs in a test binary of its own.
///
/// Returns `false`, doing nothing, when the databases live on a server of
/// `LLMJOBS_TEST_PG_URL` (which is not this process's to stop) or no cluster was started yet.
///
/// # Panics
///
/// When `pg_ctl` fails.
pub fn stop_cluster() -> bool {
    let Some(cluster) = cluster() else {
        return false;
    };
    let mut stop = Command::new(&cluster.pg_ctl[0]);
    stop.args(&cluster.pg_ctl[1..])
        .args(["stop", "-m", "immediate", "-w", "-t", "60", "-s", "-D"])
        .arg(&cluster.data)
        .stdin(Stdio::null());
    run(&mut stop).unwrap_or_else(|e| panic!("stop the test cluster: {e}"));
    true
}

/// Starts the throwaway cluster that [`stop_cluster`] stopped, on its port, and returns once it
/// accepts connections (after its crash recovery). Returns `false` where [`stop_cluster`] does.
///
/// # Panics
///
/// When `pg_ctl` fails, or the port was taken meanwhile.
pub fn start_cluster() -> bool {
    let Some(cluster) = cluster() else {
        return false;
    };
    let mut start = Command::new(&cluster.pg_ctl[0]);
    start
        .args(&cluster.pg_ctl[1..])
        .args(["start", "-w", "-t", "60", "-s", "-D"])
        .arg(&cluster.data)
        .arg("-l")
        .arg(&cluster.log)
        .args(["-o", &format!("-p {}", cluster.port)])
        .stdin(Stdio::null())
        .process_group(0);
    if let Err(e) = run(&mut start) {
        let log = std::fs::read_to_string(&cluster.log).unwrap_or_default();
        panic!("start the test cluster again: {e}\n{}", tail(&log, 20));
    }
    true
}

fn cluster() -> Option<&'static Cluster> {
    SERVER.get()?.as_ref().ok()?.cluster.as_ref()
}

/// A `psql` session kept open, fed statements one at a time: for a test that holds a lock (or a
/// transaction) while something else runs. Ends (its transaction rolled back if still open) when
/// dropped.
pub struct PsqlSession {
    child: std::process::Child,
}

impl PsqlSession {
    /// Opens a session on the database at `url`.
    ///
    /// # Panics
    ///
    /// When no `psql` can be found or started.
    pub fn open(url: &str) -> PsqlSession {
        let psql = match SERVER.get() {
            Some(Ok(server)) => server.psql.clone(),
            _ => find_psql().expect("no psql binary found"),
        };
        let child = Command::new(psql)
            .args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d", url])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psql");
        PsqlSession { child }
    }

    /// Sends `sql` (one or more statements, each ending in `;`); psql runs it as it arrives,
    /// without waiting for this call. Wait for its effect with a query of another session.
    ///
    /// # Panics
    ///
    /// When the session has ended.
    pub fn send(&mut self, sql: &str) {
        let stdin = self.child.stdin.as_mut().expect("psql's stdin");
        writeln!(stdin, "{sql}")
            .and_then(|()| stdin.flush())
            .expect("write to psql");
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        // End of input: psql ends its session, which rolls back an open transaction.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Why a database could not be had.
enum Failure {
    /// No PostgreSQL here: the test is skipped, or fails if PostgreSQL is required.
    Unavailable(String),
    /// The server runs but failed: the test fails.
    Broken(String),
}

fn settle(result: Result<String, Failure>) -> Option<String> {
    match result {
        Ok(url) => Some(url),
        Err(Failure::Unavailable(why)) if require_pg() => {
            panic!("PostgreSQL is required ({REQUIRE_VAR}=1) but unavailable: {why}")
        }
        Err(Failure::Unavailable(why)) => {
            static NOTICE: Once = Once::new();
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            NOTICE.call_once(|| {
                let _ = writeln!(std::io::stderr(), "PostgreSQL tests skipped: {why}");
            });
            None
        }
        Err(Failure::Broken(why)) => panic!("{why}"),
    }
}

/// The server this process's test databases are created on.
struct Server {
    /// The URL of the database that `CREATE DATABASE` runs in; a test database's URL is this one
    /// with the database name replaced.
    admin_url: String,
    psql: PathBuf,
    /// On a server of `LLMJOBS_TEST_PG_URL`: the SQL script the watchdog runs at exit, one
    /// `DROP DATABASE` for each database this process created, and the statement's form.
    drop_script: Option<(PathBuf, &'static str)>,
    /// The write end of the watchdog's stdin, never closed before this process exits.
    _watchdog: ChildStdin,
    /// How to stop and start the server again: only for a throwaway cluster of this process.
    cluster: Option<Cluster>,
}

/// What [`stop_cluster`] and [`start_cluster`] need of a throwaway cluster.
struct Cluster {
    pg_ctl: Vec<OsString>,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The certificate of the authority that signed the server's, when the cluster serves TLS.
    tls_ca: Option<PathBuf>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

fn server() -> Result<&'static Server, String> {
    SERVER
        .get_or_init(|| match std::env::var(URL_VAR) {
            Ok(url) if !url.trim().is_empty() => external(url.trim()),
            _ => throwaway(),
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn fresh_database() -> Result<String, Failure> {
    let server = server().map_err(Failure::Unavailable)?;
    let name = format!("llmjobs_test_{:016x}", random_u64());
    if let Some((script, form)) = &server.drop_script {
        // Written before the database exists, so that a crash in between leaves nothing behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(script)
            .and_then(|mut file| file.write_all(form.replace("{db}", &name).as_bytes()))
            .map_err(|e| Failure::Broken(format!("record {name} in {}: {e}", script.display())))?;
    }
    run_psql(
        &server.psql,
        &server.admin_url,
        &format!("CREATE DATABASE {name} TEMPLATE template0"),
    )
    .map_err(|e| Failure::Broken(format!("create the test database {name}: {e}")))?;
    Ok(with_database(&server.admin_url, &name))
}

/// A server named by `LLMJOBS_TEST_PG_URL`.
fn external(url: &str) -> Result<Server, String> {
    let psql = find_psql().ok_or_else(|| {
        format!("{URL_VAR} is set but no psql binary was found to create databases with")
    })?;
    let version: u32 = run_psql(&psql, url, "SHOW server_version_num")
        .map_err(|e| format!("cannot reach {URL_VAR}={url}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("the server_version_num of {URL_VAR}={url}: {e}"))?;
    // `WITH (FORCE)` (PostgreSQL 13 and later) ends the connections a test left open.
    let form = if version >= 130_000 {
        "DROP DATABASE IF EXISTS {db} WITH (FORCE);\n"
    } else {
        "DROP DATABASE IF EXISTS {db};\n"
    };
    let dir = temp_folder()?;
    let script = dir.join("drop.sql");
    if let Err(e) = std::fs::write(&script, "") {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("create {}: {e}", script.display()));
    }
    let keep = keep_flag();
    let watchdog = spawn_watchdog(
        EXTERNAL_WATCHDOG,
        &dir,
        [keep.into(), psql.clone().into(), url.into()],
    )?;
    if keep == "1" {
        let _ = writeln!(
            std::io::stderr(),
            "{KEEP_VAR}: the test databases stay on {url}; their names are in {}",
            script.display()
        );
    }
    Ok(Server {
        admin_url: url.to_string(),
        psql,
        drop_script: Some((script, form)),
        _watchdog: watchdog,
        cluster: None,
    })
}

/// A throwaway cluster of this process.
fn throwaway() -> Result<Server, String> {
    let started = Instant::now();
    let bin = server_bin_dir().ok_or(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under /usr/lib/postgresql/*/bin \
         or on PATH; install PostgreSQL (on Debian: apt-get install postgresql) or set \
         LLMJOBS_TEST_PG_URL",
    )?;
    let psql = find_psql().ok_or_else(|| format!("no psql in {} or on PATH", bin.display()))?;
    let run_as = RunAs::detect()?;
    let dir = temp_folder()?;
    let data = dir.join("data");
    let log = dir.join("server.log");

    // From here on the watchdog owns the folder: it removes it when this process exits, or as
    // soon as this function returns an error, which drops the write end of its stdin.
    let keep = keep_flag();
    let mut stop: Vec<OsString> = vec![keep.into()];
    stop.extend(run_as.argv(&bin.join("pg_ctl")));
    stop.extend(["stop", "-D"].map(OsString::from));
    stop.push(data.clone().into());
    stop.extend(["-m", "immediate", "-w", "-t", "30", "-s"].map(OsString::from));
    let watchdog = spawn_watchdog(CLUSTER_WATCHDOG, &dir, stop)?;
    run_as.give(&dir)?;

    let mut initdb = run_as.command(&bin.join("initdb"));
    initdb
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ])
        .arg("-D")
        .arg(&data)
        .current_dir(&dir);
    run(&mut initdb).map_err(|e| format!("initdb: {e}"))?;

    let conf = data.join("postgresql.conf");
    let socket_dir = dir.to_string_lossy().replace('\'', "''");
    let tls_ca = match SERVE_TLS
        .load(Ordering::SeqCst)
        .then(|| make_certificates(&dir, &data, &run_as))
    {
        None => None,
        Some(Ok(ca)) => Some(ca),
        Some(Err(e)) => {
            let _ = writeln!(
                std::io::stderr(),
                "the test cluster serves no TLS (its certificates could not be made: {e})"
            );
            None
        }
    };
    let tls = if tls_ca.is_some() {
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
    } else {
        ""
    };
    let settings = format!(
        "\n# llmjobs test harness (tests/support/pg.rs): a throwaway cluster\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket_dir}'\n\
         max_connections = 200\n\
         fsync = off\n\
         full_page_writes = off\n{tls}"
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut file| file.write_all(settings.as_bytes()))
        .map_err(|e| format!("configure {}: {e}", conf.display()))?;

    // A free port can be taken by someone else before the server binds it: try a few.
    let mut attempt = 0;
    let port = loop {
        attempt += 1;
        let port = free_port()?;
        let mut start = run_as.command(&bin.join("pg_ctl"));
        start
            .args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &format!("-p {port}")])
            .current_dir(&dir)
            // Out of the terminal's process group: a Ctrl-C reaches the tests, not the server,
            // and the watchdog stops it.
            .process_group(0);
        match run(&mut start) {
            Ok(_) => break port,
            Err(e) => {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                let taken = log_text.contains("could not bind")
                    || log_text.contains("Address already in use");
                if !taken || attempt == 5 {
                    return Err(format!(
                        "start the test cluster in {}: {e}\n{}",
                        dir.display(),
                        tail(&log_text, 20)
                    ));
                }
            }
        }
    };

    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    run_psql(&psql, &admin_url, "SELECT 1").map_err(|e| format!("the test cluster: {e}"))?;
    if keep == "1" {
        let _ = writeln!(
            std::io::stderr(),
            "{KEEP_VAR}: the test cluster stays at {} ({admin_url}); stop it with \
             `pg_ctl stop -D {}` and remove the folder",
            dir.display(),
            data.display()
        );
    }
    // One line per test process, straight to stderr (not captured by the test harness).
    let _ = writeln!(
        std::io::stderr(),
        "PostgreSQL test cluster of {} on 127.0.0.1:{port}, in {}, started in {:.2?}",
        bin.display(),
        dir.display(),
        started.elapsed()
    );
    Ok(Server {
        admin_url,
        psql,
        drop_script: None,
        _watchdog: watchdog,
        cluster: Some(Cluster {
            pg_ctl: run_as.argv(&bin.join("pg_ctl")),
            data,
            log,
            port,
            tls_ca,
        }),
    })
}

/// Whether this process's throwaway cluster serves TLS ([`serve_tls`]).
static SERVE_TLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process's throwaway cluster serve TLS, with a certificate authority of its own
/// ([`tls_ca`]); call it before the process's first [`pg_url`]. Off by default: TLS handshakes
/// in debug builds double the time of the other PostgreSQL tests, which connect with
/// `sslmode=prefer` and would take it.
pub fn serve_tls() {
    SERVE_TLS.store(true, Ordering::SeqCst);
}

/// Makes a certificate authority in `dir` and, in the data folder `data`, a server certificate
/// it signed for `localhost` and `127.0.0.1` (EC P-256, valid two days) with its key, owned by
/// the user the server runs as; returns the authority's certificate.
fn make_certificates(dir: &Path, data: &Path, run_as: &RunAs) -> Result<PathBuf, String> {
    let openssl = which("openssl").ok_or("no openssl on PATH")?;
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = data.join("server.key");
    let csr = dir.join("server.csr");
    let cert = data.join("server.crt");
    let ext = dir.join("server.ext");
    std::fs::write(&ext, "subjectAltName = DNS:localhost, IP:127.0.0.1\n")
        .map_err(|e| format!("write {}: {e}", ext.display()))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut make_ca = Command::new(&openssl);
    make_ca
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=llmjobs test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca);
    run(&mut make_ca).map_err(|e| format!("openssl (the authority): {e}"))?;
    let mut make_csr = Command::new(&openssl);
    make_csr
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr);
    run(&mut make_csr).map_err(|e| format!("openssl (the server's request): {e}"))?;
    let mut sign = Command::new(&openssl);
    sign.args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert);
    run(&mut sign).map_err(|e| format!("openssl (signing): {e}"))?;
    // The server refuses a key that others can read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", key.display()))?;
    run_as.give(&key)?;
    run_as.give(&cert)?;
    Ok(ca)
}

/// The certificate of the authority that signed this process's throwaway cluster's server
/// certificate (for `sslmode=verify-full&sslrootcert=...`), or `None` on a server given by
/// `LLMJOBS_TEST_PG_URL`, or when the cluster serves no TLS (not asked for with [`serve_tls`],
/// or it said why when it started).
pub fn tls_ca() -> Option<PathBuf> {
    cluster().and_then(|cluster| cluster.tls_ca.clone())
}

/// The watchdog of a throwaway cluster: `sh -c CLUSTER_WATCHDOG watchdog <dir> <keep> <stop
/// command...>`. `cat` returns when the tests' process has exited (or gave up on the cluster).
const CLUSTER_WATCHDOG: &str = r#"
trap '' INT HUP
cat >/dev/null 2>&1
dir=$1; keep=$2; shift 2
[ "$keep" = 1 ] && exit 0
pidfile="$dir/data/postmaster.pid"
if [ -f "$pidfile" ] && ! "$@" >/dev/null 2>&1; then
    pid=$(head -n 1 "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    fi
fi
# An `initdb` or `pg_ctl` cut off by the end of the tests may still be writing: try again.
rm -rf "$dir" 2>/dev/null || { sleep 1; rm -rf "$dir"; }
"#;

/// The watchdog of a server of `LLMJOBS_TEST_PG_URL`: `sh -c EXTERNAL_WATCHDOG watchdog <dir>
/// <keep> <psql> <url>`; drops the databases listed in `<dir>/drop.sql`.
const EXTERNAL_WATCHDOG: &str = r#"
trap '' INT HUP
cat >/dev/null 2>&1
dir=$1; keep=$2; psql=$3; url=$4
[ "$keep" = 1 ] && exit 0
if [ -s "$dir/drop.sql" ]; then
    PGCONNECT_TIMEOUT=10 "$psql" -X -q -w -d "$url" -f "$dir/drop.sql" >/dev/null 2>&1
fi
rm -rf "$dir"
"#;

/// Starts a watchdog shell on `dir`, with `args` after the folder; returns the write end of its
/// stdin. If the watchdog cannot start, removes the folder.
fn spawn_watchdog(
    script: &str,
    dir: &Path,
    args: impl IntoIterator<Item = OsString>,
) -> Result<ChildStdin, String> {
    let spawned = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("llmjobs-pg-watchdog")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn();
    // The `Child` itself is not kept: dropping it neither kills nor waits for the watchdog.
    match spawned {
        Ok(mut child) => Ok(child.stdin.take().expect("the watchdog's stdin is piped")),
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            Err(format!("start the cleanup watchdog (/bin/sh): {e}"))
        }
    }
}

/// Who runs `initdb` and the server: this process's user, or `postgres` when that is root.
enum RunAs {
    Me,
    User {
        /// `runuser -u postgres --`, or an equivalent `su` command line.
        prefix: Vec<OsString>,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    fn detect() -> Result<RunAs, String> {
        if output("id", &["-u"]).ok().as_deref() != Some("0") {
            return Ok(RunAs::Me);
        }
        let no_user = |_| {
            "the tests run as root, which PostgreSQL refuses, and there is no `postgres` user \
             to run it as (Debian's postgresql package creates it)"
                .to_string()
        };
        let uid = output("id", &["-u", "postgres"]).map_err(no_user)?;
        let gid = output("id", &["-g", "postgres"]).map_err(no_user)?;
        let prefix: Vec<OsString> = if let Some(runuser) = which("runuser") {
            vec![runuser.into(), "-u".into(), "postgres".into(), "--".into()]
        } else if let Some(su) = which("su") {
            let mut argv = vec![su.into()];
            argv.extend(
                [
                    "-s",
                    "/bin/sh",
                    "-c",
                    "exec \"$0\" \"$@\"",
                    "--",
                    "postgres",
                ]
                .map(OsString::from),
            );
            argv
        } else {
            return Err(
                "the tests run as root and neither runuser nor su is here to run PostgreSQL as \
                 the `postgres` user"
                    .into(),
            );
        };
        Ok(RunAs::User {
            prefix,
            uid: uid.parse().map_err(|e| format!("uid of postgres: {e}"))?,
            gid: gid.parse().map_err(|e| format!("gid of postgres: {e}"))?,
        })
    }

    /// The command line that runs `program` as this user.
    fn argv(&self, program: &Path) -> Vec<OsString> {
        match self {
            RunAs::Me => vec![program.into()],
            RunAs::User { prefix, .. } => {
                let mut argv = prefix.clone();
                argv.push(program.into());
                argv
            }
        }
    }

    fn command(&self, program: &Path) -> Command {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).stdin(Stdio::null());
        command
    }

    /// Makes `dir` this user's.
    fn give(&self, dir: &Path) -> Result<(), String> {
        match self {
            RunAs::Me => Ok(()),
            RunAs::User { uid, gid, .. } => std::os::unix::fs::chown(dir, Some(*uid), Some(*gid))
                .map_err(|e| format!("give {} to the postgres user: {e}", dir.display())),
        }
    }
}

/// A new folder `llmjobs-pg-*` in the temporary directory, not removed by this process.
fn temp_folder() -> Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix("llmjobs-pg-")
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| format!("create a temporary folder: {e}"))
}

/// The bin folder of the PostgreSQL server: the highest version under `/usr/lib/postgresql`,
/// else the folder of the `initdb` found on `PATH`.
fn server_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|binary| is_executable(&dir.join(binary)))
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let initdb = std::fs::canonicalize(which("initdb")?).ok()?;
    let dir = initdb.parent()?.to_path_buf();
    has_server(&dir).then_some(dir)
}

/// `psql` from the server's bin folder, else from `PATH`.
fn find_psql() -> Option<PathBuf> {
    static PSQL: OnceLock<Option<PathBuf>> = OnceLock::new();
    PSQL.get_or_init(|| {
        server_bin_dir()
            .map(|dir| dir.join("psql"))
            .filter(|path| is_executable(path))
            .or_else(|| which("psql"))
    })
    .clone()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn run_psql(psql: &Path, url: &str, sql: &str) -> Result<String, String> {
    let mut command = Command::new(psql);
    command
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    run(&mut command)
}

/// Runs `command` to its end; its stdout without the trailing newline, or why it failed.
fn run(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(format!(
            "{:?} failed ({}): {}{}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    run(Command::new(program).args(args).stdin(Stdio::null()))
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// `url` with its database (the path) replaced by `database`; the query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (main, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let base = match main[authority_start..].find('/') {
        Some(slash) => &main[..authority_start + slash],
        None => main,
    };
    format!("{base}/{database}{query}")
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos(),
    );
    hasher.finish()
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"))
}

/// `"1"` when `LLMJOBS_TEST_PG_KEEP` asks to keep the cluster or databases, else `"0"`.
fn keep_flag() -> &'static str {
    if env_flag(KEEP_VAR) { "1" } else { "0" }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
