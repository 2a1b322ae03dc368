//! Dropout on every device: masks drawn from one seedable RNG, as bytes for the fused kernels
//! ([`fn@bytes`], [`shared`], applied by [`Mask`] and inside the other ops) and as a tensor for candle's
//! composed ops ([`tensor_mask`]). Seeded, both forms come from the same sequence, so the fused and
//! the composed path of an op draw the same mask.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// A dropout keep mask: 0/1 bytes, and the kept values' scale (1 / keep probability). Bytes, where a
/// float mask would hold 4× the memory for as long as the graph lives.
#[derive(Debug)]
pub struct DropoutMask {
    pub keep: Vec<u8>,
    pub scale: f32,
}

thread_local! {
    /// Per thread: a training loop seeds and runs its forwards on one thread, and nothing else in
    /// the process (another loop, a test running beside it) can take draws from its sequence.
    static DROPOUT_RNG: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Makes every later dropout mask drawn on this thread reproducible (training is seedable). Without
/// a seed, masks are drawn from candle's device RNG (tensor masks) or the thread's RNG (byte masks).
pub fn seed_dropout(seed: u64) {
    use rand::SeedableRng;
    DROPOUT_RNG.with_borrow_mut(|rng| *rng = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

fn seeded() -> bool {
    DROPOUT_RNG.with_borrow(Option::is_some)
}

/// A dropout keep mask of `len` bytes (1 = kept, with probability 1 − p), from the seeded RNG when
/// there is one.
fn keep_mask(len: usize, p: f64) -> Vec<u8> {
    use rand::Rng;
    let draw = |rng: &mut dyn rand::RngCore| (0..len).map(|_| u8::from(rng.random_bool(1.0 - p))).collect();
    DROPOUT_RNG.with_borrow_mut(|seeded| match seeded.as_mut() {
        Some(rng) => draw(rng),
        None => draw(&mut rand::rng()),
    })
}

/// A dropout mask of `shape` (0 or 1/keep) as a tensor, from the seeded RNG when there is one.
pub fn tensor_mask(shape: &Shape, p: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    let keep = 1.0 - p;
    if !seeded() {
        // candle_nn::ops::dropout's mask.
        let uniform = Tensor::rand(0f32, 1f32, shape, device)?;
        return (uniform.ge(p)?.to_dtype(dtype)? * (1.0 / keep))?.contiguous();
    }
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = keep_mask(shape.elem_count(), p).into_iter().map(|k| f32::from(k) * scale).collect();
    Tensor::from_vec(mask, shape, device)?.to_dtype(dtype)
}

/// A dropout mask of `len` elements as bytes, for the fused CPU kernels.
pub fn bytes(len: usize, p: f64) -> DropoutMask {
    DropoutMask { keep: keep_mask(len, p), scale: (1.0 / (1.0 - p)) as f32 }
}

/// [`fn@bytes`], shareable by an op's forward and backward.
pub fn shared(len: usize, p: f64) -> Arc<DropoutMask> {
    Arc::new(bytes(len, p))
}

impl DropoutMask {
    /// Applies the mask's elements from `start` on to `x` in place (serially: for one head's slice
    /// inside a parallel loop).
    pub(super) fn apply_in_place(&self, start: usize, x: &mut [f32]) {
        let keep = &self.keep[start..start + x.len()];
        for (x, &k) in x.iter_mut().zip(keep) {
            *x = if k != 0 { *x * self.scale } else { 0.0 };
        }
    }

    /// `x ⊙ mask` (zero where dropped, `x · scale` where kept).
    pub(super) fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if self.keep.len() != x.len() {
            bail!("dropout mask of {} elements for a tensor of {}", self.keep.len(), x.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(x.par_chunks(MIN_ELEMS_PER_TASK))
            .zip(self.keep.par_chunks(MIN_ELEMS_PER_TASK))
            .for_each(|((y, x), keep)| {
                for ((y, &x), &k) in y.iter_mut().zip(x).zip(keep) {
                    *y = if k != 0 { x * self.scale } else { 0.0 };
                }
            });
        Ok(y)
    }
}

/// `x ⊙ mask` for a dropout mask of `x`'s shape; backward `grad ⊙ mask`.
pub struct Mask {
    pub mask: std::sync::Arc<DropoutMask>,
}

impl CustomOp1 for Mask {
    fn name(&self) -> &'static str {
        "fused-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.mask.apply(f32_slice(s, l)?)?), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Mask { mask: self.mask.clone() })?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::Device;

    #[test]
    fn mask_multiplies_forward_and_backward() -> Result<()> {
        let reference = Tensor::new(&[[0f32, 2.0, 2.0], [2.0, 0.0, 2.0]], &Device::Cpu)?;
        let mask = std::sync::Arc::new(DropoutMask { keep: vec![0, 1, 1, 1, 0, 1], scale: 2.0 });
        check(&[2, 3], |x| x.apply_op1(Mask { mask: mask.clone() }), |x| x * &reference, 0.0)
    }
}
