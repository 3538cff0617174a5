//! Variables that let PMIx clients of other versions (the one in the image)
//! talk to Slurm's PMIx server (the host's).
//!
//! Slurm tells clients which transport, security and data-store components
//! to use through `PMIX_PTL_MODULE`, `PMIX_SECURITY_MODE` and
//! `PMIX_GDS_MODULE`. PMIx clients read their MCA parameters
//! (`PMIX_MCA_ptl`, `PMIX_MCA_psec`, `PMIX_MCA_gds`), and not every client
//! version maps the former to the latter, so when the latter are unset the
//! host's choice is copied over (the same mapping Sarus and enroot apply).
//! Values the host already set are never touched.

/// `(server variable, client MCA parameter)` pairs.
const MAPPINGS: [(&str, &str); 3] = [
    ("PMIX_PTL_MODULE", "PMIX_MCA_ptl"),
    ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
    ("PMIX_GDS_MODULE", "PMIX_MCA_gds"),
];

/// Every variable [`compat_env`] reads: what a caller collects from the task.
pub const MAPPED_NAMES: [&str; 6] = [
    "PMIX_PTL_MODULE",
    "PMIX_MCA_ptl",
    "PMIX_SECURITY_MODE",
    "PMIX_MCA_psec",
    "PMIX_GDS_MODULE",
    "PMIX_MCA_gds",
];

/// The variables to add to a task's environment `host` (name, value).
pub fn compat_env(host: &[(String, String)]) -> Vec<(String, String)> {
    let get = |name: &str| host.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    MAPPINGS
        .iter()
        .filter(|(_, mca)| get(mca).is_none())
        .filter_map(|(server, mca)| get(server).map(|v| (mca.to_string(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn maps_only_what_is_unset() {
        let host = env(&[
            ("PMIX_SECURITY_MODE", "munge,native"),
            ("PMIX_GDS_MODULE", "ds21,ds12,hash"),
            ("PMIX_MCA_gds", "hash"),
        ]);
        assert_eq!(compat_env(&host), env(&[("PMIX_MCA_psec", "munge,native")]));
        assert!(compat_env(&env(&[("PATH", "/bin")])).is_empty());
    }
}
