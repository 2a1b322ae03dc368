//! The settings that take one of a few values, as types: each deserializes from (and serializes back
//! to) the string written in the configuration, and parses the same string on the command line
//! (`FromStr`), so a wrong value is rejected when the configuration is read, naming the key.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `model.dtype`: the weights' floating-point type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl FromStr for Dtype {
    type Err = String;
    /// `f32`, `f16`, `bf16` (and torch's `float32`, `float16`, `bfloat16`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            other => Err(format!("dtype {other:?} is not one of f32, f16, bf16")),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// `preprocess.mode`: how an image pair becomes the model's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessMode {
    /// Full decode and Pillow's exact resampling: the authors' pixels, byte for byte.
    #[default]
    Exact,
    /// JPEGs decoded at a reduced DCT scale (still ≥ 2× the model's resolution), then the exact
    /// resampling from there: several times faster on photos, within a measured error of `exact`.
    Fast,
}

impl FromStr for PreprocessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(PreprocessMode::Exact),
            "fast" => Ok(PreprocessMode::Fast),
            other => Err(format!("preprocess mode {other:?} is not one of exact, fast")),
        }
    }
}

impl fmt::Display for PreprocessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PreprocessMode::Exact => "exact",
            PreprocessMode::Fast => "fast",
        })
    }
}

/// `model.device`: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("device {s:?} is not one of cpu, cuda, cuda:N")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `model.blas`: the CPU GEMM for f32 products (see `model::blas`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum BlasChoice {
    /// OpenBLAS when it is installed, else the gemm crate.
    Auto,
    /// The gemm crate.
    Off,
    /// This CBLAS library (a file name the loader finds, or a path); failing to load it is an error.
    Library(PathBuf),
}

impl FromStr for BlasChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("expected \"auto\", \"off\" or the path of a CBLAS library".into()),
            "auto" => Ok(BlasChoice::Auto),
            "off" => Ok(BlasChoice::Off),
            path => Ok(BlasChoice::Library(path.into())),
        }
    }
}

impl TryFrom<String> for BlasChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BlasChoice> for String {
    fn from(b: BlasChoice) -> String {
        b.to_string()
    }
}

impl fmt::Display for BlasChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlasChoice::Auto => f.write_str("auto"),
            BlasChoice::Off => f.write_str("off"),
            BlasChoice::Library(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    Auto,
    /// JSON lines.
    Json,
    /// Human-readable.
    Pretty,
}

/// `kafka.auto_offset_reset`: where a group without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    /// librdkafka's `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip_through_their_strings() {
        for d in ["cpu", "cuda:0", "cuda:3"] {
            assert_eq!(d.parse::<DeviceSpec>().unwrap().to_string(), d);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        for d in ["f32", "f16", "bf16"] {
            assert_eq!(d.parse::<Dtype>().unwrap().to_string(), d);
        }
        assert_eq!("bfloat16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert!("f64".parse::<Dtype>().is_err());
        assert_eq!(" auto ".parse::<BlasChoice>().unwrap(), BlasChoice::Auto);
        assert_eq!("off".parse::<BlasChoice>().unwrap(), BlasChoice::Off);
        let lib: BlasChoice = "/usr/lib/libblis.so".parse().unwrap();
        assert_eq!(lib, BlasChoice::Library("/usr/lib/libblis.so".into()));
        assert_eq!(lib.to_string(), "/usr/lib/libblis.so");
        assert!(" ".parse::<BlasChoice>().is_err());
    }
}
