//! What sifrun's two Slurm plugins share: the SPANK plugin (`spank/`) and
//! the cli_filter plugin (`cli-filter/`).
//!
//! - [`names_sif_image`]: which `--container` values are sifrun's to take;
//! - [`headers`]: the Slurm release a plugin is built for (used by their
//!   build scripts: Slurm loads a plugin only when its `plugin_version`
//!   has Slurm's own major.minor).

#![forbid(unsafe_code)]

pub mod headers;

/// Does Slurm's `--container` value name a SIF image? Anything else (an OCI
/// bundle directory, another plugin's syntax) is left alone.
pub fn names_sif_image(value: &str) -> bool {
    let v = value.trim();
    v.len() > 4 && v.is_char_boundary(v.len() - 4) && v[v.len() - 4..].eq_ignore_ascii_case(".sif")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sif_names() {
        assert!(names_sif_image("/img/app.sif"));
        assert!(names_sif_image("app.SIF "));
        assert!(!names_sif_image(".sif"));
        assert!(!names_sif_image("/bundles/oci-dir"));
        assert!(!names_sif_image("docker://ubuntu"));
        assert!(!names_sif_image("é.si"));
        assert!(!names_sif_image("aé.sif".trim_end_matches(".sif")));
    }
}
