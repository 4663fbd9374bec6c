//! `pbft keygen`: a fresh ed25519 key in a file only its owner can read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use pbft_crypto::KeyPair;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (refuses to overwrite an existing file).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &KeygenArgs) -> ExitCode {
    let key = match KeyPair::generate() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("error: no randomness to make a key from: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = key.save(&args.out) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", hex::encode(key.public_key()));
    eprintln!(
        "wrote the secret key to {}; the line above is its public key, for the cluster file",
        args.out.display()
    );
    ExitCode::SUCCESS
}
