//! Moving a SIF image from Slurm's `--container` to sifrun's `--sif-image`.

use std::ffi::OsString;

/// The environment variable through which SPANK sets an option the way
/// the command line does (`spank_process_env_options`): `SLURM_SPANK_`,
/// then `_SLURM_SPANK_OPTION_`, the plugin's name (`sifrun`), `_` and the
/// option's name with `-` as `_`.
pub const SIF_IMAGE_SPANK_ENV: &str = "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_sif_image";

/// What a client command (srun, sbatch, salloc) offers the filter.
pub trait Client {
    /// The `--container` value, if any (from the command line or
    /// `SLURM_CONTAINER`).
    fn container(&mut self) -> Option<String>;
    /// Unsets `--container`.
    fn clear_container(&mut self);
    /// Has SPANK process the options set in the environment
    /// ([`SIF_IMAGE_SPANK_ENV`]); 0 on success.
    fn process_spank_env_options(&mut self) -> i32;
    /// Whether sifrun's `--sif-image` is set (false when no sifrun SPANK
    /// plugin is loaded here).
    fn sif_image_set(&mut self) -> bool;
    /// The command's working directory.
    fn cwd(&mut self) -> Option<std::path::PathBuf> {
        std::env::current_dir().ok()
    }
}

/// What the filter did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No `--container`, or one that is not a SIF image: Slurm's.
    LeftToSlurm,
    /// The SIF image now travels as `--sif-image`.
    Moved(String),
    /// `--sif-image` was given too and wins; `--container` is dropped.
    SifImageWins,
}

/// Moves a SIF `--container` to sifrun's `--sif-image`.
pub fn move_sif_container(client: &mut dyn Client) -> Result<Outcome, String> {
    let Some(image) = client.container() else {
        return Ok(Outcome::LeftToSlurm);
    };
    if !slurm_glue::names_sif_image(&image) {
        return Ok(Outcome::LeftToSlurm);
    }
    // A relative path means the submitting directory, which the steps may
    // not know (srun --export=NONE leaves out PWD): made absolute here.
    let image = match (image.starts_with('/'), client.cwd()) {
        (false, Some(cwd)) => cwd.join(image.trim()).display().to_string(),
        _ => image,
    };
    // `--sif-image` on this command line wins. One that only came with the
    // environment (an srun inside `sbatch --sif-image`: SPANK forwards it as
    // SIF_IMAGE_SPANK_ENV) is a default that this `--container` overrides.
    let inherited = std::env::var_os(SIF_IMAGE_SPANK_ENV).is_some();
    if client.sif_image_set() && !inherited {
        client.clear_container();
        return Ok(Outcome::SifImageWins);
    }
    let rc = with_only_spank_env(SIF_IMAGE_SPANK_ENV, &image, || {
        client.process_spank_env_options()
    });
    // Checked, not assumed: without the SPANK plugin here SPANK ignores the
    // variable, and clearing --container would run the step on the host.
    if rc != 0 || !client.sif_image_set() {
        return Err(format!(
            "--container={image}: the sifrun SPANK plugin did not take it as --sif-image (is it in plugstack.conf on this host?)"
        ));
    }
    client.clear_container();
    Ok(Outcome::Moved(image))
}

/// Runs `process` with `name=value` as the only `SLURM_SPANK_*` variable
/// in the environment, and puts the others back afterwards.
///
/// SPANK applies every option it finds there each time it is asked; the
/// others were applied already (before this filter ran), and applying them
/// twice could trip a plugin that refuses an option given twice.
fn with_only_spank_env(name: &str, value: &str, process: impl FnOnce() -> i32) -> i32 {
    let others: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k.as_encoded_bytes().starts_with(b"SLURM_SPANK_"))
        .collect();
    for (k, _) in &others {
        std::env::remove_var(k);
    }
    std::env::set_var(name, value);
    let rc = process();
    std::env::remove_var(name);
    for (k, v) in others {
        std::env::set_var(k, v);
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose SPANK records what it saw in the environment.
    #[derive(Default)]
    struct Fake {
        container: Option<String>,
        cleared: bool,
        seen: Vec<(String, String)>,
        rc: i32,
        /// --sif-image given on the command line.
        sif_image: bool,
        /// SPANK knows the option (the sifrun plugin is loaded).
        plugin: bool,
    }

    impl Client for Fake {
        fn container(&mut self) -> Option<String> {
            self.container.clone()
        }
        fn clear_container(&mut self) {
            self.cleared = true;
        }
        fn process_spank_env_options(&mut self) -> i32 {
            self.seen = std::env::vars()
                .filter(|(k, _)| k.starts_with("SLURM_SPANK_"))
                .collect();
            self.sif_image |= self.plugin && std::env::var(SIF_IMAGE_SPANK_ENV).is_ok();
            self.rc
        }
        fn sif_image_set(&mut self) -> bool {
            self.sif_image
        }
    }

    // One test: it changes this process's environment.
    #[test]
    fn sif_images_move_and_everything_else_stays() {
        let mut none = Fake::default();
        assert_eq!(move_sif_container(&mut none), Ok(Outcome::LeftToSlurm));
        let mut oci = Fake {
            container: Some("/bundles/ubuntu".into()),
            ..Fake::default()
        };
        assert_eq!(move_sif_container(&mut oci), Ok(Outcome::LeftToSlurm));
        assert!(!oci.cleared && oci.seen.is_empty());

        std::env::set_var("SLURM_SPANK_OTHER", "kept");
        let mut sif = Fake {
            container: Some("/img/app.sif".into()),
            plugin: true,
            ..Fake::default()
        };
        assert_eq!(
            move_sif_container(&mut sif),
            Ok(Outcome::Moved("/img/app.sif".into()))
        );
        assert!(sif.cleared);
        // SPANK saw only the image, and the environment is as before.
        assert_eq!(
            sif.seen,
            vec![(SIF_IMAGE_SPANK_ENV.to_string(), "/img/app.sif".to_string())]
        );
        assert_eq!(std::env::var("SLURM_SPANK_OTHER").as_deref(), Ok("kept"));
        assert!(std::env::var(SIF_IMAGE_SPANK_ENV).is_err());

        // A relative image is the working directory's.
        let mut relative = Fake {
            container: Some("imgs/app.sif".into()),
            plugin: true,
            ..Fake::default()
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            move_sif_container(&mut relative),
            Ok(Outcome::Moved(
                cwd.join("imgs/app.sif").display().to_string()
            ))
        );

        // SPANK refused it (no sifrun plugin here): the container stays,
        // and the user gets one line.
        let mut refused = Fake {
            container: Some("app.SIF".into()),
            rc: -1,
            ..Fake::default()
        };
        let e = move_sif_container(&mut refused).unwrap_err();
        assert!(
            e.contains("app.SIF: the sifrun SPANK plugin") && !refused.cleared,
            "{e}"
        );
        std::env::remove_var("SLURM_SPANK_OTHER");
    }
}
