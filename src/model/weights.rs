//! Reading safetensors shards without memory-mapping them.
//!
//! candle's `MmapedSafetensors` copies every tensor out of a memory map; the mapped pages it touched
//! stay resident next to the copies until the map is dropped, so loading a 15 GB f32 checkpoint peaks
//! near twice its size (bounded only by the kernel reclaiming page cache). Here each tensor is read
//! with `pread` straight into the buffer the tensor then owns: peak memory is the model plus nothing.
//! The header parsing follows the safetensors format: an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The tensors of a set of safetensors files, read on demand.
pub struct ShardReader {
    files: Vec<(PathBuf, File)>,
    entries: HashMap<String, Entry>,
}

impl ShardReader {
    /// Opens the shards and reads their headers.
    pub fn open(paths: &[PathBuf]) -> anyhow::Result<ShardReader> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            for (name, entry) in read_header(&file, path, i)? {
                entries.insert(name, entry);
            }
            files.push((path.clone(), file));
        }
        Ok(ShardReader { files, entries })
    }

    /// Every tensor's name and declared shape (from the headers; nothing is read).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self.entries.iter().map(|(n, e)| (n.clone(), e.shape.clone())).collect();
        v.sort();
        v
    }

    /// A `VarBuilder` over these shards.
    pub fn var_builder(paths: &[PathBuf], dtype: DType, device: &Device) -> anyhow::Result<VarBuilder<'static>> {
        let reader = ShardReader::open(paths)?;
        Ok(VarBuilder::from_backend(Box::new(reader), dtype, device.clone()))
    }

    /// Reads one tensor as stored (its file dtype), on the CPU.
    pub fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_owned() }.bt())?;
        match e.dtype {
            DType::F32 => self.read_as::<f32>(e),
            DType::F16 => self.read_as::<half::f16>(e),
            DType::BF16 => self.read_as::<half::bf16>(e),
            DType::F64 => self.read_as::<f64>(e),
            DType::I64 => self.read_as::<i64>(e),
            DType::U32 => self.read_as::<u32>(e),
            DType::U8 => self.read_as::<u8>(e),
            other => candle_core::bail!("{name}: unsupported dtype {other:?}"),
        }
    }

    fn read_as<T: WithDType + bytemuck::Pod>(&self, e: &Entry) -> candle_core::Result<Tensor> {
        let n: usize = e.shape.iter().product();
        let bytes = (e.end - e.start) as usize;
        if bytes != n * std::mem::size_of::<T>() {
            candle_core::bail!(
                "tensor data is {bytes} bytes, expected {} for shape {:?}",
                n * T::DTYPE.size_in_bytes(),
                e.shape
            );
        }
        let mut data = vec![T::zeroed(); n];
        let (path, file) = &self.files[e.file];
        file.read_exact_at(bytemuck::cast_slice_mut(&mut data), e.start)
            .map_err(|err| candle_core::Error::Msg(format!("reading {}: {err}", path.display())))?;
        Tensor::from_vec(data, e.shape.as_slice(), &Device::Cpu)
    }
}

impl SimpleBackend for ShardReader {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        // Checked before reading: a wrong shape must not cost a read of the tensor.
        if let Some(e) = self.entries.get(name) {
            if e.shape.as_slice() != s.dims() {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: s,
                    got: e.shape.clone().into(),
                }
                .bt());
            }
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

fn read_header(file: &File, path: &Path, index: usize) -> anyhow::Result<Vec<(String, Entry)>> {
    let bad = || format!("{} is not a safetensors file", path.display());
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).with_context(bad)?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata()?.len();
    anyhow::ensure!(len <= 100 << 20 && 8 + len <= file_len, "{}: header length {len} is invalid", bad());
    let mut header = vec![0u8; len as usize];
    file.read_exact_at(&mut header, 8).with_context(bad)?;
    // `Metadata` checks that the offsets tile the data and match each tensor's dtype and shape.
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header).with_context(bad)?;
    let data_start = 8 + len;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = DType::try_from(info.dtype).with_context(|| format!("{}: {name}", path.display()))?;
        let (start, end) = (data_start + info.data_offsets.0 as u64, data_start + info.data_offsets.1 as u64);
        anyhow::ensure!(end <= file_len, "{}: {name}'s data lies outside the file", path.display());
        out.push((name, Entry { file: index, dtype, shape: info.shape.clone(), start, end }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())]),
            &path,
        )
        .unwrap();
        let vb = ShardReader::var_builder(&[path], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(vb.get((3, 4), "a").unwrap().to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(vb.get(2, "b").unwrap().to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert!(vb.contains_tensor("a") && !vb.contains_tensor("c"));
        assert!(vb.get((4, 3), "a").is_err(), "shape mismatch is an error");
        assert!(vb.get(1, "c").is_err());
    }

    #[test]
    fn rejects_a_file_that_is_not_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffnot json").unwrap();
        let err = ShardReader::open(&[path]).err().unwrap().to_string();
        assert!(err.contains("header length"), "{err}");
    }
}
