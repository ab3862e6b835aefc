// size probe: flate2 Compress + Decompress (whatever backend the features pick)
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
fn main() {
    let a: Vec<u8> = std::env::args().flat_map(|s| s.into_bytes()).collect();
    let mut c = Compress::new(Compression::new(6), false);
    let mut z = Vec::with_capacity(a.len() + 64);
    c.compress_vec(&a, &mut z, FlushCompress::Sync).unwrap();
    let mut d = Decompress::new(false);
    let mut o = Vec::with_capacity(a.len() + 64);
    d.decompress_vec(&z, &mut o, FlushDecompress::Sync).unwrap();
    println!("{} {}", z.len(), o.len());
}
