//! The `resca` command line: one module per subcommand, each with its flags (`Args`, whose doc
//! comment is the subcommand's line in `resca --help`) and its handler (`run`), and the flag
//! groups and helpers the subcommands share. A new subcommand is a new module here and one line
//! in the table at the end of this file.

mod backend_args;
mod method_args;
mod model_args;
mod output;
mod sampling_args;
mod vae_args;
mod value_parsers;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "resca",
    version,
    about = "Residual caching (ResCa) for diffusion transformers: sampling, forwards and checks on the CPU reference, the GPU kernels and their simulator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Declares each subcommand's module, the [`Command`] enum (one variant per subcommand, in the
/// order of `resca --help`) and its dispatch to the module's `run`.
macro_rules! subcommands {
    ($($variant:ident => $module:ident,)*) => {
        $(mod $module;)*

        #[derive(Subcommand)]
        pub enum Command {
            $($variant($module::Args),)*
        }

        impl Command {
            /// Runs the subcommand.
            pub fn run(self) -> Result<()> {
                match self {
                    $(Command::$variant(args) => $module::run(args),)*
                }
            }
        }
    };
}

subcommands! {
    Sample => sample,
    Forward => forward,
    Decode => decode,
    Plan => plan,
    Stability => stability,
    Compare => compare,
    Trajectories => trajectories,
    Info => info,
}
