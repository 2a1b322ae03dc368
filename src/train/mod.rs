//! LoRA fine-tuning (and full training of small bases) in candle, and the periodic retraining job.
//!
//! [`lora`] creates and exports PEFT-compatible LoRA variables; [`loss`] is the reference's captioning
//! loss; [`optim`] is torch's AdamW; [`augment`] the paper's non-disruptive augmentation;
//! [`trainer`] the loop; [`synthetic`] a small image-difference world that proves it learns.

pub mod augment;
pub mod data;
pub mod job;
pub mod lora;
pub mod loss;
pub mod optim;
pub mod promotion;
pub mod synthetic;
pub mod trainer;
