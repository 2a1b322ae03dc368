//! A CBLAS `sgemm` loaded at run time (OpenBLAS by default) for the f32 linears on CPU.
//!
//! candle's CPU matmul (the `gemm` crate's AVX2/FMA kernels) is about as fast as PyTorch's on
//! BLIP-2's linear shapes; OpenBLAS is about 15 % faster than both on the 2-core AVX-512 dev VM (its
//! kernels for the CPU are picked at run time). Linking a BLAS at build time would tie every build
//! to one; loading `libopenblas.so.0` when it is installed (Debian: `libopenblas0-pthread`) keeps the
//! build self-contained, and [`sgemm`] falls back to the `gemm` crate, candle's own, when it is
//! absent. Compare the two with `BLIP2IDC_MODEL__BLAS=off` on any benchmark.
//!
//! The choice is `model.blas` in the config (env `BLIP2IDC_MODEL__BLAS`, which the benchmarks and
//! tests read directly): `auto` (the default) tries `libopenblas.so.0` and falls back quietly; `off`
//! always uses the `gemm` crate; anything else is a path (or soname) that must load. It is made once
//! per process: by [`configure`] at start, or by the first product.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The environment variable that selects the BLAS (the config's `model.blas`).
pub const ENV: &str = "BLIP2IDC_MODEL__BLAS";
const DEFAULT_LIBS: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

/// A loaded CBLAS.
pub struct Blas {
    sgemm: Sgemm,
    /// What was loaded, e.g. `libopenblas.so.0 (OpenBLAS 0.3.21 DYNAMIC_ARCH ... Cooperlake)`.
    pub description: String,
    _lib: libloading::Library,
}

/// The choice made for this process, and what it gave.
static BLAS: OnceLock<(String, Result<Option<Blas>, String>)> = OnceLock::new();

/// Makes the process's BLAS choice (`model.blas`) and describes it; an explicit library that cannot
/// be loaded is an error, so that a misconfigured service stops at start. A second call with another
/// choice is an error too: the first one stands.
pub fn configure(choice: &str) -> anyhow::Result<String> {
    let (chosen, result) = BLAS.get_or_init(|| (choice.to_owned(), resolve(choice)));
    anyhow::ensure!(chosen == choice, "model.blas is already {chosen:?} in this process; cannot switch to {choice:?}");
    match result {
        Ok(Some(b)) => Ok(format!("BLAS {}", b.description)),
        Ok(None) => Ok("the gemm crate (no BLAS loaded)".to_owned()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The loaded BLAS, if any (the choice is [`ENV`], or `auto`, when [`configure`] was not called).
pub fn get() -> Option<&'static Blas> {
    let (_, result) = BLAS.get_or_init(|| {
        let choice = std::env::var(ENV).unwrap_or_else(|_| "auto".to_owned());
        let result = resolve(&choice);
        (choice, result)
    });
    result.as_ref().ok().and_then(Option::as_ref)
}

/// OpenBLAS's idle threads spin on `sched_yield` for 2^28 cycles (~0.1 s) after each product, a few
/// percent of a training step spent in the kernel while candle's own threads run the element-wise
/// ops between products; 2^4 cycles makes them sleep at once (mid training step: median 3.4 → 3.2 s
/// over 6 alternating runs). OpenBLAS reads `OPENBLAS_THREAD_TIMEOUT` only when it is loaded and has
/// no setter, so this sets the variable unless the user did. Changing the environment is only sound
/// while the process has one thread: call it first in `main` (see `crate::setup_process`).
pub fn quiet_idle_threads() {
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        std::env::set_var("OPENBLAS_THREAD_TIMEOUT", "4");
    }
}

fn resolve(choice: &str) -> Result<Option<Blas>, String> {
    match choice.trim() {
        "" | "auto" => Ok(DEFAULT_LIBS.iter().find_map(|name| load(name).ok())),
        "off" => Ok(None),
        path => load(path).map(Some).map_err(|e| format!("model.blas = {path:?}: {e}")),
    }
}

fn load(name: &str) -> Result<Blas, String> {
    // SAFETY: loading a shared library runs its initialisers; OpenBLAS's only start its thread pool.
    let lib = unsafe { libloading::Library::new(name) }.map_err(|e| format!("cannot load {name}: {e}"))?;
    // SAFETY: `cblas_sgemm` has this signature in every CBLAS (cblas.h).
    let sgemm = unsafe { lib.get::<Sgemm>(b"cblas_sgemm\0") }.map_err(|e| format!("{name} has no cblas_sgemm: {e}"))?;
    let sgemm = *sgemm;
    let mut description = name.to_owned();
    // SAFETY: OpenBLAS's `char *openblas_get_config(void)` returns a static NUL-terminated string.
    if let Ok(config) = unsafe { lib.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_config\0") } {
        let text = unsafe { CStr::from_ptr(config()) }.to_string_lossy().into_owned();
        description = format!("{name} ({text})");
    }
    // One pool of threads as wide as candle's, so the two never oversubscribe the cores.
    // SAFETY: `void openblas_set_num_threads(int)`.
    if let Ok(set) = unsafe { lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") } {
        unsafe { set(candle_core::utils::get_num_threads() as c_int) };
    }
    Ok(Blas { sgemm, description, _lib: lib })
}

/// Products with fewer rows than this (decoding: one row per sequence) stay on the `gemm` crate:
/// OpenBLAS 0.3.21 is up to 3× slower there (1×2560×2560: 2.9 ms vs 0.9 ms), faster from about 16
/// rows on (training: 60–514 rows per linear at batch 2).
const BLAS_MIN_ROWS: usize = 16;

/// Row-major `c[m, n] = a[m, k] · op(b) + beta · c`, where `op(b)` is `bᵀ` for `b` [n, k] when
/// `b_transposed`, else `b` [k, n]; `lda`, `ldb`, `ldc` are the row strides. Runs on the loaded BLAS
/// for [`BLAS_MIN_ROWS`] rows or more, else on the `gemm` crate with candle's thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_transposed: bool,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let blas = if m >= BLAS_MIN_ROWS { get() } else { None };
    sgemm_on(blas, (m, n, k), a, lda, b, ldb, b_transposed, beta, c, ldc)
}

#[allow(clippy::too_many_arguments)]
fn sgemm_on(
    blas: Option<&Blas>,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_transposed: bool,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (b_rows, b_cols) = if b_transposed { (n, k) } else { (k, n) };
    assert!(lda >= k && ldb >= b_cols && ldc >= n, "sgemm: a row stride is too small");
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "sgemm: a is too short");
    assert!(k == 0 || b.len() >= (b_rows - 1) * ldb + b_cols, "sgemm: b is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "sgemm: c is too short");
    if k == 0 {
        c.chunks_mut(ldc).take(m).for_each(|row| row[..n].iter_mut().for_each(|v| *v *= beta));
        return;
    }
    // The strides of op(b) as a [k, n] matrix.
    let (b_rs, b_cs) = if b_transposed { (1, ldb) } else { (ldb, 1) };
    match blas {
        Some(blas) => {
            let int = |v: usize| c_int::try_from(v).expect("sgemm: dimension exceeds the BLAS's int");
            let tb = if b_transposed { TRANS } else { NO_TRANS };
            // SAFETY: the asserts above keep every access of the row-major operands inside the slices.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    tb,
                    int(m),
                    int(n),
                    int(k),
                    1.0,
                    a.as_ptr(),
                    int(lda),
                    b.as_ptr(),
                    int(ldb),
                    beta,
                    c.as_mut_ptr(),
                    int(ldc),
                )
            }
        }
        None => {
            let threads = candle_core::utils::get_num_threads();
            let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            // SAFETY: as above; gemm computes dst = alpha·dst + beta·lhs·rhs, and reads dst only when
            // `read_dst`.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    ldc as isize,
                    beta != 0.0,
                    a.as_ptr(),
                    1,
                    lda as isize,
                    b.as_ptr(),
                    b_cs as isize,
                    b_rs as isize,
                    beta,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], bt: bool) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * if bt { b[j * k + p] } else { b[p * n + j] }).sum();
            }
        }
        c
    }

    #[test]
    fn sgemm_matches_a_naive_product() {
        // .ci/run installs OpenBLAS and sets CI_REQUIRE_BLAS, so CI cannot skip the BLAS path; the
        // `gemm` crate's path runs everywhere.
        if std::env::var_os("CI_REQUIRE_BLAS").is_some() {
            assert!(get().is_some(), "no BLAS loaded from {:?}", std::env::var(ENV));
        }
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 1.5).collect();
        for (blas, bt) in [(None, true), (None, false), (get(), true), (get(), false)] {
            let sgemm = |dims, a: &[f32], lda, b: &[f32], ldb, bt, beta, c: &mut [f32], ldc| {
                sgemm_on(blas, dims, a, lda, b, ldb, bt, beta, c, ldc)
            };
            let mut c = vec![1f32; m * n];
            sgemm((m, n, k), &a, k, &b, if bt { k } else { n }, bt, 0.0, &mut c, n);
            assert_eq!(c, naive(m, n, k, &a, &b, bt), "b transposed: {bt}");
            // A strided output (ldc > n) leaves the gaps alone.
            let mut wide = vec![9f32; m * (n + 2)];
            sgemm((m, n, k), &a, k, &b, if bt { k } else { n }, bt, 0.0, &mut wide, n + 2);
            let rows: Vec<f32> = wide.chunks(n + 2).flat_map(|r| r[..n].to_vec()).collect();
            assert_eq!(rows, naive(m, n, k, &a, &b, bt));
            assert!(wide.chunks(n + 2).all(|r| r[n..] == [9.0, 9.0]));
            // beta = 1 accumulates.
            let mut c = vec![1f32; m * n];
            sgemm((m, n, k), &a, k, &b, if bt { k } else { n }, bt, 1.0, &mut c, n);
            let expected: Vec<f32> = naive(m, n, k, &a, &b, bt).iter().map(|v| v + 1.0).collect();
            assert_eq!(c, expected);
        }
    }
}
