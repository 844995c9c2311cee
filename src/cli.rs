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
    /// The serve arguments, whether given after `serve` or bare.
    pub fn serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
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
        let bare = Cli::parse_from(["dicom-gateway", "--ae-title", "X"]).serve_args();
        let serve = Cli::parse_from(["dicom-gateway", "serve", "--ae-title", "X"]).serve_args();
        assert_eq!(bare.overrides.ae_title.as_deref(), Some("X"));
        assert_eq!(serve.overrides.ae_title.as_deref(), Some("X"));
    }
}
