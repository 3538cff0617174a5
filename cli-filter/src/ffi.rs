//! The symbols Slurm's plugin loader looks for (`src/interfaces/cli_filter.c`),
//! and the libslurm functions the filter calls. `slurm_opt_t` stays opaque:
//! it is only passed back to `slurm_option_get`/`slurm_option_reset`, whose
//! signatures are the same in every supported release.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::rewrite::{move_sif_container, Client, Outcome};

#[no_mangle]
pub static plugin_name: [u8; b"sifrun: --container=IMAGE.sif for the sifrun SPANK plugin\0".len()] =
    *b"sifrun: --container=IMAGE.sif for the sifrun SPANK plugin\0";
#[no_mangle]
pub static plugin_type: [u8; b"cli_filter/sifrun\0".len()] = *b"cli_filter/sifrun\0";
/// Slurm loads this plugin only when this is its own release, micro
/// version included.
#[no_mangle]
pub static plugin_version: u32 = crate::BUILT_FOR_SLURM;

extern "C" {
    fn slurm_option_get(opt: *mut c_void, name: *const c_char) -> *mut c_char;
    fn slurm_option_reset(opt: *mut c_void, name: *const c_char) -> bool;
    fn slurm_xfree(item: *mut *mut c_void);
    fn spank_process_env_options() -> c_int;
    fn spank_option_isset(name: *mut c_char) -> bool;
}

/// srun/sbatch/salloc's options, as Slurm's option API sees them.
struct SlurmClient(*mut c_void);

impl Client for SlurmClient {
    fn container(&mut self) -> Option<String> {
        // SAFETY: `self.0` is the live slurm_opt_t Slurm passed in; the
        // result is NULL or a string Slurm allocated for us.
        let mut value = unsafe { slurm_option_get(self.0, c"container".as_ptr()) };
        if value.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string from Slurm, read before it is freed.
        let text = unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: freed once, with Slurm's own allocator (xfree).
        unsafe { slurm_xfree((&mut value as *mut *mut c_char).cast()) };
        Some(text)
    }

    fn clear_container(&mut self) {
        // SAFETY: the live slurm_opt_t and a NUL-terminated option name.
        unsafe { slurm_option_reset(self.0, c"container".as_ptr()) };
        // srun has already exported its value for the tasks; they would
        // see the user's (possibly relative) path as if Slurm ran it.
        std::env::remove_var("SLURM_CONTAINER");
    }

    fn sif_image_set(&mut self) -> bool {
        let mut name = *b"sif-image\0";
        // SAFETY: a NUL-terminated name Slurm only reads (the C prototype
        // lacks const).
        unsafe { spank_option_isset(name.as_mut_ptr().cast()) }
    }

    fn process_spank_env_options(&mut self) -> i32 {
        // SAFETY: no arguments; SPANK's option cache is set up by the time
        // the client calls the filter.
        unsafe { spank_process_env_options() }
    }
}

#[no_mangle]
pub extern "C" fn init() -> c_int {
    0
}

#[no_mangle]
pub extern "C" fn fini() -> c_int {
    0
}

#[no_mangle]
pub extern "C" fn cli_filter_p_setup_defaults(_opt: *mut c_void, _early: bool) -> c_int {
    0
}

/// Called once per (heterogeneous job component's) option set, before
/// submission. A failure stops the command with our one line.
#[no_mangle]
pub extern "C" fn cli_filter_p_pre_submit(opt: *mut c_void, _offset: c_int) -> c_int {
    if opt.is_null() {
        return 0;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        move_sif_container(&mut SlurmClient(opt))
    }));
    match result {
        Ok(Ok(Outcome::LeftToSlurm | Outcome::Moved(_) | Outcome::SifImageWins)) => 0,
        Ok(Err(e)) => {
            eprintln!("sifrun: error: {e}");
            -1
        }
        Err(_) => {
            eprintln!("sifrun: error: internal error in cli_filter/sifrun");
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn cli_filter_p_post_submit(_offset: c_int, _job_id: u32, _step_id: u32) {}
