// size probe: what inflate-only permessage-deflate adds (miniz_oxide core, no flate2)
use miniz_oxide::inflate::core::{decompress, inflate_flags::*, DecompressorOxide};
fn main() {
    let a: Vec<u8> = std::env::args().flat_map(|s| s.into_bytes()).collect();
    let mut st = Box::new(DecompressorOxide::new());
    let mut out = vec![0u8; 65536];
    let (_, _, n) = decompress(&mut st, &a, &mut out, 0, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF);
    println!("{n}");
}
