//! PyTorch's distributed variables, from Slurm's (admin setting
//! `pytorch_env`): `torch.distributed` with the `env://` rendezvous reads
//! `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and
//! `MASTER_PORT`, which `torchrun` would otherwise set. pyxis sites get the
//! same from enroot's PyTorch hook; the port follows that hook's rule (from
//! the job ID), so concurrent jobs whose first node is the same do not
//! collide. A variable the job already has is left as it is.

/// The variables to set in a task whose job environment is `job_env`;
/// those Slurm does not give the values for are left out.
pub fn pytorch_vars(job_env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            if job_env(name).is_none() {
                vars.push((name.to_string(), value));
            }
        }
    };
    add("RANK", job_env("SLURM_PROCID"));
    add("LOCAL_RANK", job_env("SLURM_LOCALID"));
    add(
        "WORLD_SIZE",
        job_env("SLURM_NTASKS").or_else(|| job_env("SLURM_NPROCS")),
    );
    add(
        "LOCAL_WORLD_SIZE",
        job_env("SLURM_STEP_TASKS_PER_NODE")
            .zip(job_env("SLURM_NODEID"))
            .and_then(|(layout, node)| tasks_on_node(&layout, node.parse().ok()?))
            .map(|n| n.to_string()),
    );
    add(
        "MASTER_ADDR",
        job_env("SLURM_STEP_NODELIST")
            .or_else(|| job_env("SLURM_JOB_NODELIST"))
            .and_then(|list| first_host(&list)),
    );
    add(
        "MASTER_PORT",
        job_env("SLURM_JOB_ID")
            .and_then(|id| id.parse::<u64>().ok())
            .map(|id| (id % 16384 + 49152).to_string()),
    );
    vars
}

/// The task count of node `index` in Slurm's compressed per-node layout
/// (`SLURM_STEP_TASKS_PER_NODE`: `2(x3),1` is 2, 2, 2, 1).
pub fn tasks_on_node(layout: &str, index: usize) -> Option<u32> {
    let mut node = 0usize;
    for entry in layout.split(',') {
        let (count, repeat) = match entry.split_once("(x") {
            Some((count, rest)) => (count, rest.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (entry, 1),
        };
        let count: u32 = count.parse().ok()?;
        if index < node + repeat {
            return Some(count);
        }
        node += repeat;
    }
    None
}

/// The first host of a Slurm host list (`node[03-05,9],login1` gives
/// `node03`): its first name, with the first number of its first bracket.
pub fn first_host(list: &str) -> Option<String> {
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let first = &list[..end];
    let host = match first.split_once('[') {
        None => first.to_string(),
        Some((prefix, rest)) => {
            let (ranges, suffix) = rest.split_once(']')?;
            let start = ranges.split([',', '-']).next()?;
            if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            format!("{prefix}{start}{suffix}")
        }
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_layouts_and_host_lists() {
        assert_eq!(tasks_on_node("2(x3),1", 0), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 2), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(tasks_on_node("2(x3),1", 4), None);
        assert_eq!(tasks_on_node("4", 0), Some(4));
        assert_eq!(tasks_on_node("x(x2)", 0), None);
        assert_eq!(
            first_host("node[03-05,9],login1").as_deref(),
            Some("node03")
        );
        assert_eq!(first_host("login1,node[1-2]").as_deref(), Some("login1"));
        assert_eq!(first_host("gpu[7]-ib").as_deref(), Some("gpu7-ib"));
        assert_eq!(first_host("node1").as_deref(), Some("node1"));
        assert_eq!(first_host("node[").as_deref(), None);
        assert_eq!(first_host("").as_deref(), None);
    }

    #[test]
    fn pytorch_variables_come_from_slurms_and_never_replace_the_jobs() {
        let job = |name: &str| {
            match name {
                "SLURM_PROCID" => Some("5"),
                "SLURM_LOCALID" => Some("1"),
                "SLURM_NTASKS" => Some("8"),
                "SLURM_STEP_TASKS_PER_NODE" => Some("4(x2)"),
                "SLURM_NODEID" => Some("1"),
                "SLURM_STEP_NODELIST" => Some("gpu[12-13]"),
                "SLURM_JOB_ID" => Some("100000"),
                "MASTER_PORT" => Some("1234"),
                _ => None,
            }
            .map(str::to_string)
        };
        let vars = pytorch_vars(&job);
        let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("RANK"), Some("5"));
        assert_eq!(get("LOCAL_RANK"), Some("1"));
        assert_eq!(get("WORLD_SIZE"), Some("8"));
        assert_eq!(get("LOCAL_WORLD_SIZE"), Some("4"));
        assert_eq!(get("MASTER_ADDR"), Some("gpu12"));
        // The job's own MASTER_PORT stays.
        assert_eq!(get("MASTER_PORT"), None);
        assert!(pytorch_vars(&|_| None).is_empty());
    }
}
