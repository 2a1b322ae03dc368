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

use crate::config::BlasChoice;

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
static BLAS: OnceLock<(BlasChoice, Result<Option<Blas>, String>)> = OnceLock::new();

/// Makes the process's BLAS choice (`model.blas`) and describes it; an explicit library that cannot
/// be loaded is an error, so that a misconfigured service stops at start. A second call with another
/// choice is an error too: the first one stands.
pub fn configure(choice: &BlasChoice) -> anyhow::Result<String> {
    let (chosen, result) = BLAS.get_or_init(|| (choice.clone(), resolve(choice)));
    anyhow::ensure!(
        chosen == choice,
        "model.blas is already \"{chosen}\" in this process; cannot switch to \"{choice}\""
    );
    match result {
        Ok(Some(b)) => Ok(format!("BLAS {}", b.description)),
        Ok(None) => Ok("the gemm crate (no BLAS loaded)".to_owned()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The loaded BLAS, if any (the choice is [`ENV`], or `auto`, when [`configure`] was not called).
pub fn get() -> Option<&'static Blas> {
    let (_, result) = BLAS.get_or_init(|| {
        let choice = from_env();
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

/// The choice [`ENV`] makes (`auto` when it is unset or empty), for processes that read no config.
pub fn from_env() -> BlasChoice {
    std::env::var(ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(BlasChoice::Auto)
}

fn resolve(choice: &BlasChoice) -> Result<Option<Blas>, String> {
    match choice {
        BlasChoice::Auto => Ok(DEFAULT_LIBS.iter().find_map(|name| load(name).ok())),
        BlasChoice::Off => Ok(None),
        BlasChoice::Library(path) => {
            let path = path.to_string_lossy();
            load(&path).map(Some).map_err(|e| format!("model.blas = {path:?}: {e}"))
        }
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
/// for `BLAS_MIN_ROWS` rows or more, else on the `gemm` crate with candle's thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dims: (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_transposed: bool,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    sgemm_ex(dims, Operand::new(a, lda), Operand { data: b, ld: ldb, transposed: b_transposed }, beta, c, ldc)
}

/// A row-major operand of [`sgemm_ex`]: `data` with row stride `ld`, used as stored or transposed.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    /// Used as stored.
    pub fn new(data: &'a [f32], ld: usize) -> Self {
        Operand { data, ld, transposed: false }
    }

    /// Used transposed.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Operand { data, ld, transposed: true }
    }
}

/// Row-major `c[m, n] = op(a) · op(b) + beta · c` with `op(a)` [m, k] and `op(b)` [k, n]: the general
/// form of [`sgemm`] (attention's backward needs a transposed left operand).
pub fn sgemm_ex(dims: (usize, usize, usize), a: Operand, b: Operand, beta: f32, c: &mut [f32], ldc: usize) {
    let engine = match get() {
        Some(blas) if dims.0 >= BLAS_MIN_ROWS => Engine::Blas(blas),
        _ => Engine::Gemm { threads: candle_core::utils::get_num_threads() },
    };
    sgemm_on(engine, dims, a, b, beta, c, ldc)
}

/// [`sgemm_ex`] on the calling thread only (the `gemm` crate, no thread pool): for many small
/// products run from parallel tasks, such as attention's per-head products.
pub fn sgemm_serial(dims: (usize, usize, usize), a: Operand, b: Operand, beta: f32, c: &mut [f32], ldc: usize) {
    sgemm_on(Engine::Gemm { threads: 1 }, dims, a, b, beta, c, ldc)
}

/// What computes a product.
#[derive(Clone, Copy)]
enum Engine<'a> {
    Blas(&'a Blas),
    /// The `gemm` crate on this many threads.
    Gemm {
        threads: usize,
    },
}

fn sgemm_on(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Stored shapes: op(a) is [m, k], op(b) is [k, n].
    let (a_rows, a_cols) = if a.transposed { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if b.transposed { (n, k) } else { (k, n) };
    assert!(a.ld >= a_cols && b.ld >= b_cols && ldc >= n, "sgemm: a row stride is too small");
    assert!(k == 0 || a.data.len() >= (a_rows - 1) * a.ld + a_cols, "sgemm: a is too short");
    assert!(k == 0 || b.data.len() >= (b_rows - 1) * b.ld + b_cols, "sgemm: b is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "sgemm: c is too short");
    if k == 0 {
        c.chunks_mut(ldc).take(m).for_each(|row| row[..n].iter_mut().for_each(|v| *v *= beta));
        return;
    }
    // (row, column) strides of op(a) as an [m, k] matrix and of op(b) as a [k, n] one.
    let strides = |o: &Operand| if o.transposed { (1, o.ld) } else { (o.ld, 1) };
    let ((a_rs, a_cs), (b_rs, b_cs)) = (strides(&a), strides(&b));
    match engine {
        Engine::Blas(blas) => {
            let int = |v: usize| c_int::try_from(v).expect("sgemm: dimension exceeds the BLAS's int");
            let trans = |o: &Operand| if o.transposed { TRANS } else { NO_TRANS };
            // SAFETY: the asserts above keep every access of the row-major operands inside the slices.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    trans(&a),
                    trans(&b),
                    int(m),
                    int(n),
                    int(k),
                    1.0,
                    a.data.as_ptr(),
                    int(a.ld),
                    b.data.as_ptr(),
                    int(b.ld),
                    beta,
                    c.as_mut_ptr(),
                    int(ldc),
                )
            }
        }
        Engine::Gemm { threads } => {
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
                    a.data.as_ptr(),
                    a_cs as isize,
                    a_rs as isize,
                    b.data.as_ptr(),
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

    /// `op(a) · op(b)` for `a` stored [m, k] (or [k, m] when `at`) and `b` [k, n] (or [n, k] when `bt`).
    fn naive(m: usize, n: usize, k: usize, a: &[f32], at: bool, b: &[f32], bt: bool) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        (if at { a[p * m + i] } else { a[i * k + p] }) * if bt { b[j * k + p] } else { b[p * n + j] }
                    })
                    .sum();
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
        let threads = candle_core::utils::get_num_threads();
        let mut engines = vec![Engine::Gemm { threads }, Engine::Gemm { threads: 1 }];
        engines.extend(get().map(Engine::Blas));
        for engine in engines {
            for (at, bt) in [(false, false), (false, true), (true, false), (true, true)] {
                let op_a = Operand { data: &a, ld: if at { m } else { k }, transposed: at };
                let op_b = Operand { data: &b, ld: if bt { k } else { n }, transposed: bt };
                let expected = naive(m, n, k, &a, at, &b, bt);
                let what = match engine {
                    Engine::Blas(_) => format!("blas, a transposed {at}, b transposed {bt}"),
                    Engine::Gemm { threads } => format!("gemm on {threads}, a transposed {at}, b transposed {bt}"),
                };
                let mut c = vec![1f32; m * n];
                sgemm_on(engine, (m, n, k), op_a, op_b, 0.0, &mut c, n);
                assert_eq!(c, expected, "{what}");
                // A strided output (ldc > n) leaves the gaps alone.
                let mut wide = vec![9f32; m * (n + 2)];
                sgemm_on(engine, (m, n, k), op_a, op_b, 0.0, &mut wide, n + 2);
                let rows: Vec<f32> = wide.chunks(n + 2).flat_map(|r| r[..n].to_vec()).collect();
                assert_eq!(rows, expected, "{what}");
                assert!(wide.chunks(n + 2).all(|r| r[n..] == [9.0, 9.0]), "{what}");
                // beta = 1 accumulates.
                let mut c = vec![1f32; m * n];
                sgemm_on(engine, (m, n, k), op_a, op_b, 1.0, &mut c, n);
                let plus_one: Vec<f32> = expected.iter().map(|v| v + 1.0).collect();
                assert_eq!(c, plus_one, "{what}");
            }
        }
    }
}
