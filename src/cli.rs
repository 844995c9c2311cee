//! The command line. A bare `dicom-gateway` is `dicom-gateway serve`.

use clap::{Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "dicom-gateway",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Print a signed download URL for a stored object (e.g. to share one
    /// instance), using the data directory's signing keys.
    SignUrl(SignUrlArgs),
    /// Rebuild the index from the object store (stop the gateway first).
    ///
    /// Lists every study in the store and indexes what the index lacks:
    /// instances from their headers, media and reports from their sidecars.
    /// Entries the index already has are kept as they are.
    ///
    /// Exit status: 0 when every object under studies/ is indexed, 1 when
    /// some could not be (each is printed with the reason), 2 when the
    /// command could not run (gateway running, store unreachable, …).
    Reindex(ReindexArgs),
    /// Compare the index with the object store (stop the gateway first).
    ///
    /// Prints every index entry whose object is missing (or has another
    /// size) and every instance or media object no entry points at.
    ///
    /// Exit status: 0 when they agree, 1 when they do not, 2 when the
    /// command could not run.
    Verify(VerifyArgs),
    /// Ask the running gateway whether it is healthy (GET /healthz on its
    /// http_listen address; a wildcard address is asked on loopback). The
    /// container image's HEALTHCHECK: no curl needed.
    ///
    /// Takes the same configuration (file, DICOM_GATEWAY_* variables, flags)
    /// as the server it checks. Exit status: 0 healthy, 1 not (or the check
    /// could not run), with the reason on stderr.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Seconds the whole check may take, connection included (1–60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Clear the index's instance, study and media entries first, for a
    /// full rebuild (receive times then come from the objects' modification
    /// times, and sources from their headers). Report jobs, webhook answers
    /// and Avara study pairings are kept: the store does not hold them.
    #[arg(long)]
    pub wipe: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SignUrlArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Seconds the URL stays valid (at most 7 days).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Object key, e.g. studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm
    pub key: String,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// What to do; a bare invocation serves.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

impl Command {
    /// The exit status when the command fails to run. The maintenance
    /// commands keep 1 for "ran, and found problems".
    pub fn failure_status(&self) -> u8 {
        match self {
            Command::Reindex(_) | Command::Verify(_) => 2,
            Command::Serve(_) | Command::SignUrl(_) | Command::Healthcheck(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bare_and_serve_take_the_same_flags() {
        for argv in [
            &["dicom-gateway", "--ae-title", "X"][..],
            &["dicom-gateway", "serve", "--ae-title", "X"],
        ] {
            let Command::Serve(args) = Cli::parse_from(argv).into_command() else {
                panic!("{argv:?} does not serve");
            };
            assert_eq!(args.overrides.ae_title.as_deref(), Some("X"));
        }
    }

    #[test]
    fn maintenance_commands_take_the_serve_overrides() {
        let argv = ["dicom-gateway", "reindex", "--data-dir", "/d", "--wipe"];
        let Command::Reindex(args) = Cli::parse_from(argv).into_command() else {
            panic!("not reindex");
        };
        assert!(args.wipe);
        assert_eq!(args.overrides.data_dir.as_deref(), Some("/d".as_ref()));
        let argv = ["dicom-gateway", "verify", "--storage", "s3://b/p"];
        let Command::Verify(args) = Cli::parse_from(argv).into_command() else {
            panic!("not verify");
        };
        assert_eq!(args.overrides.storage_url.as_deref(), Some("s3://b/p"));
    }

    #[test]
    fn healthcheck_takes_the_listen_address_and_a_bounded_timeout() {
        let argv = ["dicom-gateway", "healthcheck", "--http-listen", "0.0.0.0:9"];
        let command = Cli::parse_from(argv).into_command();
        assert_eq!(command.failure_status(), 1);
        let Command::Healthcheck(args) = command else {
            panic!("not healthcheck");
        };
        assert_eq!(args.timeout, 5);
        assert_eq!(
            args.overrides.http_listen,
            Some("0.0.0.0:9".parse().unwrap())
        );
        for bad in ["0", "61"] {
            let argv = ["dicom-gateway", "healthcheck", "--timeout", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "--timeout {bad}");
        }
    }
}
