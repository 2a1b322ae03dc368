//! Dropout masks as bytes, and applying them ([`Mask`]).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// A dropout keep mask: 0/1 bytes, and the kept values' scale (1 / keep probability). Bytes, where a
/// float mask would hold 4× the memory for as long as the graph lives.
#[derive(Debug)]
pub struct DropoutMask {
    pub keep: Vec<u8>,
    pub scale: f32,
}

impl DropoutMask {
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
