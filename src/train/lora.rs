//! Trainable LoRA parameters: created as PEFT does (A kaiming-uniform with a = √5, B = 0) or continued
//! from an adapter, attached to the model unmerged, and exported back as a PEFT adapter.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::model::blip2::Blip2Model;
use crate::model::lora::LoraBranch;
use crate::model::lora::{Adapter, AdapterConfig, TargetMatcher};

/// One adapted module's variables.
pub struct LoraVars {
    pub module: String,
    /// [r, in], f32.
    pub a: Var,
    /// [out, r], f32.
    pub b: Var,
}

/// Every LoRA variable of a model.
pub struct LoraParams {
    pub config: AdapterConfig,
    pub modules: Vec<LoraVars>,
}

impl LoraParams {
    /// Fresh LoRA on every module `config` targets, initialised as PEFT 0.6 (`reset_lora_parameters`):
    /// `A ~ U(-1/√in, 1/√in)` (kaiming_uniform with a = √5), `B = 0`. Attaches them to `model`.
    pub fn init(model: &mut Blip2Model, config: AdapterConfig, seed: u64) -> anyhow::Result<LoraParams> {
        let matcher = TargetMatcher::new(&config.target_modules)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = model.device().clone();
        let mut modules = Vec::new();
        for lin in model.linears_mut() {
            if !matcher.matches(&lin.name) {
                continue;
            }
            let (inp, out) = (lin.in_dim(), lin.out_dim());
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..config.r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), &device)?)?;
            let b = Var::from_tensor(&Tensor::zeros((out, config.r), DType::F32, &device)?)?;
            modules.push(LoraVars { module: lin.name.clone(), a, b });
        }
        anyhow::ensure!(!modules.is_empty(), "the LoRA target_modules match no linear layer of the model");
        let params = LoraParams { config, modules };
        params.attach(model)?;
        Ok(params)
    }

    /// Continues training `adapter`: its weights become the variables.
    pub fn from_adapter(model: &mut Blip2Model, adapter: &Adapter) -> anyhow::Result<LoraParams> {
        let mut modules = Vec::new();
        for lin in model.linears_mut() {
            if let Some(branch) = adapter.branch_for(&lin.name, lin.in_dim(), lin.out_dim())? {
                modules.push(LoraVars {
                    module: lin.name.clone(),
                    a: Var::from_tensor(&branch.a.to_dtype(DType::F32)?)?,
                    b: Var::from_tensor(&branch.b.to_dtype(DType::F32)?)?,
                });
            }
        }
        anyhow::ensure!(!modules.is_empty(), "the adapter adapts no linear layer of the model");
        let params = LoraParams { config: adapter.config.clone(), modules };
        params.attach(model)?;
        Ok(params)
    }

    /// Sets the (unmerged) LoRA branch of every adapted linear to these variables.
    pub fn attach(&self, model: &mut Blip2Model) -> anyhow::Result<()> {
        let by_name: HashMap<&str, &LoraVars> = self.modules.iter().map(|m| (m.module.as_str(), m)).collect();
        let scale = self.config.scale();
        let mut attached = 0;
        for lin in model.linears_mut() {
            if let Some(m) = by_name.get(lin.name.as_str()) {
                anyhow::ensure!(!lin.merged, "{} has a merged adapter; load the base unmerged to train", lin.name);
                lin.lora = Some(LoraBranch {
                    a: m.a.as_tensor().clone(),
                    b: m.b.as_tensor().clone(),
                    scale,
                    dropout: self.config.lora_dropout,
                });
                attached += 1;
            }
        }
        anyhow::ensure!(attached == self.modules.len(), "some LoRA modules are missing from the model");
        Ok(())
    }

    /// All variables, A then B per module.
    pub fn vars(&self) -> Vec<Var> {
        self.modules.iter().flat_map(|m| [m.a.clone(), m.b.clone()]).collect()
    }

    /// Trainable parameter count.
    pub fn num_params(&self) -> usize {
        self.modules.iter().map(|m| m.a.elem_count() + m.b.elem_count()).sum()
    }

    /// The current weights as a PEFT adapter.
    pub fn to_adapter(&self) -> anyhow::Result<Adapter> {
        let weights = self
            .modules
            .iter()
            .map(|m| Ok((m.module.clone(), (m.a.as_tensor().copy()?, m.b.as_tensor().copy()?))))
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        Ok(Adapter {
            matcher: TargetMatcher::new(&self.config.target_modules)?,
            config: self.config.clone(),
            weights,
            source: None,
        })
    }
}
