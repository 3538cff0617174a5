//! Declares the Slurm version the cli_filter plugin is built against:
//! srun, sbatch and salloc load a plugin other than SPANK only when its
//! `plugin_version` is their own release, micro version included (Slurm's
//! `src/common/plugin.c`), so the plugin must be rebuilt with every Slurm
//! update (see `slurm_glue::headers`).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let headers = slurm_glue::headers::find("sifrun-cli-filter").unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rerun-if-changed={}",
        headers.version_header.display()
    );
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let code = format!(
        "/// The Slurm release this plugin is built for (0xMMmmuu), from `{}`.\n\
         pub const BUILT_FOR_SLURM: u32 = {:#08x};\n",
        headers.version_header.display(),
        headers.number
    );
    fs::write(out.join("built_for.rs"), code).expect("writing built_for.rs");
}
