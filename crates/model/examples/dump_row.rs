//! Diagnostic: prints the first values of row R of tensor NAME, dequantised.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let f = gguf::GgufFile::open(&a[1]).unwrap();
    let (info, data) = f.tensor(&a[2]).unwrap();
    let cols = info.dims[0] as usize;
    let r: usize = a[3].parse().unwrap();
    let rb = info.ggml_type.row_bytes(cols).unwrap();
    let mut out = vec![0f32; cols];
    quant::dequantize_row(info.ggml_type, &data[r * rb..(r + 1) * rb], &mut out).unwrap();
    println!("{:?}", &out[..8]);
    println!("{:?}", &out[cols - 4..]);
}
