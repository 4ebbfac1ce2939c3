//! Minimal writer for NumPy `.npy` files (float32, C order): the exchange format
//! with the Python training tools.

use std::io::{BufWriter, Write};
use std::path::Path;

pub struct NpyWriter {
    out: BufWriter<std::fs::File>,
    remaining: usize,
}

impl NpyWriter {
    /// Creates the file and writes the header; exactly `product(shape)` values must follow.
    pub fn create(path: &Path, shape: &[usize]) -> std::io::Result<NpyWriter> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let dims = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
        // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
        let total = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        out.write_all(b"\x93NUMPY\x01\x00")?;
        out.write_all(&(header.len() as u16).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        Ok(NpyWriter { out, remaining: shape.iter().product() })
    }

    pub fn write(&mut self, values: &[f32]) -> std::io::Result<()> {
        if values.len() > self.remaining {
            return Err(std::io::Error::other("more values than the declared shape"));
        }
        self.remaining -= values.len();
        for v in values {
            self.out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        if self.remaining != 0 {
            return Err(std::io::Error::other(format!("{} values missing for the declared shape", self.remaining)));
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}
