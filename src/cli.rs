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
}
