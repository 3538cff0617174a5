//! Declares the Slurm version the plugin is built against.
//!
//! slurmstepd loads a SPANK plugin only when its `plugin_version` has
//! slurmstepd's own major.minor, so the version cannot be fixed in the
//! source: it is read from the `slurm_version.h` next to the `spank.h` the
//! bindings are generated from (the `slurm-spank` crate runs bindgen over
//! `<slurm/spank.h>`, found on the same include path; see
//! `slurm_glue::headers`), and the `SPANK_PLUGIN!` declaration is
//! generated with it.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let headers = slurm_glue::headers::find("sifrun-spank").unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rerun-if-changed={}",
        headers.version_header.display()
    );
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    let major_minor = headers.major_minor;
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let code = format!(
        "/// Slurm major.minor this plugin is built for (0xMMmm00), from\n\
         /// `{}`.\n\
         pub const BUILT_FOR_SLURM: u32 = {major_minor:#08x};\n\
         SPANK_PLUGIN!(b\"sifrun\", {major_minor:#08x}, SifrunPlugin);\n",
        headers.version_header.display()
    );
    fs::write(out.join("plugin_version.rs"), code).expect("writing plugin_version.rs");
}
