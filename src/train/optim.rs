//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, decoupled weight decay, bias correction),
//! over f32 `Var`s.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Hyper-parameters; the defaults are torch's (lr aside).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The optimizer state.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<AdamW> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { cfg, slots, step: 0 })
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads` (a variable without a gradient is left unchanged, as torch does).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            // param.mul_(1 - lr * weight_decay)
            let p = (s.var.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
            s.m = ((&s.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((s.v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let p = (p - (s.m.div(&denom)? * (c.lr / bias1))?)?;
            s.var.set(&p)?;
        }
        Ok(())
    }
}
