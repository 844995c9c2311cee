use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dicom_gateway::cli::{Cli, Command, HealthcheckArgs, ReindexArgs, SignUrlArgs, VerifyArgs};
use dicom_gateway::config::{Config, SecretEnv};
use dicom_gateway::store::ObjectKey;
use dicom_gateway::store::signer::UrlSigner;
use dicom_gateway::{Listeners, healthcheck, maintenance, shutdown, telemetry};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let command = Cli::parse().into_command();
    let failure = command.failure_status();
    match try_main(command) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("dicom-gateway: error: {e:#}");
            ExitCode::from(failure)
        }
    }
}

fn try_main(command: Command) -> anyhow::Result<ExitCode> {
    let args = match command {
        Command::Serve(args) => args,
        Command::SignUrl(args) => return sign_url(args).map(|()| ExitCode::SUCCESS),
        Command::Reindex(args) => return reindex(args),
        Command::Verify(args) => return verify(args),
        Command::Healthcheck(args) => return healthcheck(args),
    };
    let cfg = Config::load(&args.overrides, &SecretEnv::from_process())?;
    if args.print_config {
        print!("{}", cfg.to_redacted_toml());
        return Ok(ExitCode::SUCCESS);
    }
    telemetry::init(cfg.log_format);
    tune_allocator();
    // FAILPOINTS from the environment, in builds with the `failpoints`
    // feature (the crash tests); nothing otherwise.
    let _failpoints = fail::FailScenario::setup();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let served = runtime.block_on(async {
        let listeners = Listeners {
            dicom: bind(cfg.dicom_listen, "DICOM").await?,
            http: bind(cfg.http_listen, "HTTP").await?,
            dicom_tls: match cfg.dicom_tls_listen {
                Some(addr) => Some(bind(addr, "DICOM TLS").await?),
                None => None,
            },
        };
        let cancel = CancellationToken::new();
        shutdown::on_signals(cancel.clone()).context("installing signal handlers")?;
        dicom_gateway::run(cfg, listeners, cancel).await
    });
    // `run` has drained what it waits for (the index is flushed); a blocking
    // call still under way (a webhook delivery to an endpoint that does not
    // answer) is left behind rather than holding the exit. Whatever it would
    // have recorded is repeated after the next start.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `reindex`: the summary on stdout, the log on stderr.
fn reindex(args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.overrides, &SecretEnv::from_process())?;
    telemetry::init(cfg.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let summary = runtime.block_on(maintenance::reindex_data_dir(&cfg, args.wipe))?;
    print!("{summary}");
    Ok(ExitCode::from(u8::from(!summary.is_complete())))
}

/// `verify`: each problem and the counts on stdout.
fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.overrides, &SecretEnv::from_process())?;
    telemetry::init(cfg.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let report = runtime.block_on(maintenance::verify_data_dir(&cfg))?;
    print!("{report}");
    Ok(ExitCode::from(u8::from(!report.is_consistent())))
}

/// `healthcheck`: one GET of /healthz where the configured server listens;
/// the URL on stdout when healthy, the reason on stderr (exit 1) when not.
/// Secrets are not needed for it, so the environment's are not read.
fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.overrides, &SecretEnv::default())?;
    let check = if cfg.https() {
        healthcheck::check_https
    } else {
        healthcheck::check
    };
    let url = check(
        healthcheck::probe_addr(cfg.http_listen),
        Duration::from_secs(args.timeout),
    )?;
    println!("healthy: {url}");
    Ok(ExitCode::SUCCESS)
}

fn sign_url(args: SignUrlArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.overrides, &SecretEnv::default())?;
    let key = ObjectKey::parse(&args.key)
        .with_context(|| format!("{:?} is not an object key", args.key))?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let signer = UrlSigner::load_or_create(&cfg.url_signing_keys_path(), &cfg.public_url)?;
    println!(
        "{}",
        signer.file_url(&key, Duration::from_secs(args.ttl), SystemTime::now())
    );
    Ok(())
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// PDUs and spool buffers are 128 KiB–1 MiB: above glibc's default mmap
/// threshold, so every one would be a fresh mapping, faulted in page by page
/// and unmapped again, for every instance. Serve them from the heap instead
/// (and keep freed heap memory around); memory stays bounded by the number of
/// associations times their buffers.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
