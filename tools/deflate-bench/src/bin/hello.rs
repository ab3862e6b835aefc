fn main() {
    let a: Vec<u8> = std::env::args().flat_map(|s| s.into_bytes()).collect();
    println!("{}", a.len());
}
