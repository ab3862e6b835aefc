//! permessage-deflate cost probe for chargesite (docs/ocpp.md "permessage-deflate"):
//! `cd tools/deflate-bench && cargo run --release --bin deflate-bench` (its own workspace, not built by CI).
//! RFC 7692 with server_no_context_takeover + client_no_context_takeover:
//! each message is compressed with a sync flush, the trailing 00 00 ff ff is
//! stripped; the receiver appends it back and inflates. No state survives a message.

mod msgs;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

struct Counting;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(c, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(c, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CUR.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let q = System.realloc(p, l, n);
        if !q.is_null() {
            let c = if n >= l.size() {
                CUR.fetch_add(n - l.size(), Relaxed) + (n - l.size())
            } else {
                CUR.fetch_sub(l.size() - n, Relaxed) - (l.size() - n)
            };
            PEAK.fetch_max(c, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        q
    }
}
#[global_allocator]
static A: Counting = Counting;

/// (bytes still held after `f` returned, peak above baseline during `f`, allocations)
fn heap<T>(f: impl FnOnce() -> T) -> (T, usize, usize, usize) {
    let base = CUR.load(Relaxed);
    PEAK.store(base, Relaxed);
    let a0 = ALLOCS.load(Relaxed);
    let t = f();
    let held = CUR.load(Relaxed) - base;
    (t, held, PEAK.load(Relaxed) - base, ALLOCS.load(Relaxed) - a0)
}

const N: u32 = 100_000;
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

fn backend() -> &'static str {
    if cfg!(feature = "zrs") { "zlib-rs" } else { "miniz_oxide" }
}

fn new_c(level: u32, wbits: u8) -> Compress {
    #[cfg(feature = "zrs")]
    {
        Compress::new_with_window_bits(Compression::new(level), false, wbits)
    }
    #[cfg(not(feature = "zrs"))]
    {
        let _ = wbits; // miniz_oxide: always a 32 KiB window
        Compress::new(Compression::new(level), false)
    }
}
fn new_d(wbits: u8) -> Decompress {
    #[cfg(feature = "zrs")]
    {
        Decompress::new_with_window_bits(false, wbits)
    }
    #[cfg(not(feature = "zrs"))]
    {
        let _ = wbits;
        Decompress::new(false)
    }
}

/// One message, RFC 7692 style: sync flush, strip 00 00 ff ff, reset (no context takeover).
fn deflate_msg(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    loop {
        c.compress_vec(&input[(c.total_in() as usize).min(input.len())..], out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize >= input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(256);
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    c.reset();
}

fn inflate_msg(d: &mut Decompress, frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    d.decompress_vec(frame, out, FlushDecompress::Sync).unwrap();
    let n = d.total_in() as usize;
    d.decompress_vec(&TAIL, out, FlushDecompress::Sync).unwrap();
    assert_eq!(d.total_in() as usize, n + 4);
    d.reset(false);
}

/// On-CPU time of this thread (ns), from /proc/thread-self/schedstat: the machine is
/// shared (load 7-9 on 2 cores), so wall-clock time would mostly measure waiting.
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}
#[derive(Clone, Copy)]
struct T(u64);
impl T {
    fn now() -> T {
        T(cpu_ns())
    }
}
fn per_us(t: T) -> f64 {
    (cpu_ns() - t.0) as f64 / 1e3 / N as f64
}

fn main() {
    println!("backend: flate2 1.1 / {}  (x86_64 AMD EPYC, release, {} iterations, on-CPU time per op)", backend(), N);
    let wb_c = 9u8; // what we would use if the backend honours it
    let wb_d = 15u8; // a client that did not offer client_max_window_bits may use 32 KiB

    // ---- heap per instance
    let (c, held, peak, n) = heap(|| new_c(6, wb_c));
    println!("heap Compress::new(level 6, raw, wbits {wb_c}): held {held} B, peak {peak} B, {n} allocs");
    drop(c);
    let (c, held, peak, n) = heap(|| new_c(1, wb_c));
    println!("heap Compress::new(level 1, raw, wbits {wb_c}): held {held} B, peak {peak} B, {n} allocs");
    drop(c);
    #[cfg(feature = "zrs")]
    {
        let (c, held, _, _) = heap(|| Compress::new_with_window_bits(Compression::new(6), false, 15));
        println!("heap Compress::new(level 6, raw, wbits 15): held {held} B");
        drop(c);
    }
    let (d, held, peak, n) = heap(|| new_d(wb_d));
    println!("heap Decompress::new(raw, wbits {wb_d}): held {held} B, peak {peak} B, {n} allocs");
    let mut d = d;
    // does first use allocate more (zlib-rs allocates the window lazily)?
    let mut tmp = Vec::with_capacity(4096);
    {
        let mut c = new_c(6, wb_c);
        let mut f = Vec::with_capacity(2048);
        deflate_msg(&mut c, msgs::TE201.as_bytes(), &mut f);
        let (_, held, peak, _) = heap(|| inflate_msg(&mut d, &f, &mut tmp));
        println!("  ... after inflating one message: +{held} B held, +{peak} B peak");
    }
    drop(d);
    #[cfg(feature = "zrs")]
    {
        let (d, held, _, _) = heap(|| Decompress::new_with_window_bits(false, 9));
        println!("heap Decompress::new(raw, wbits 9): held {held} B");
        drop(d);
    }
    {
        let (d, held, _, _) = heap(|| Box::new(miniz_oxide::inflate::core::DecompressorOxide::new()));
        println!(
            "heap miniz_oxide core DecompressorOxide (no dictionary, inflate straight into the message buffer): {held} B"
        );
        drop(d);
    }

    for (name, msg) in [("2.0.1 TransactionEvent(Updated), 3-phase", msgs::TE201), ("1.6 MeterValues", msgs::MV16)] {
        let m = msg.as_bytes();
        println!("\n== {name}: {} B JSON", m.len());
        for level in [1u32, 6] {
            let mut c = new_c(level, wb_c);
            let mut d = new_d(wb_d);
            let mut f = Vec::with_capacity(m.len() + 64);
            let mut out = Vec::with_capacity(m.len() + 64);
            deflate_msg(&mut c, m, &mut f);
            inflate_msg(&mut d, &f, &mut out);
            assert_eq!(out, m);
            let z = f.clone();
            println!(
                "level {level}: {} -> {} B payload ({:.0}% of original; header 4 B either way for 126..65535 B)",
                m.len(),
                z.len(),
                100.0 * z.len() as f64 / m.len() as f64
            );

            // compress, state kept and reset per message
            let t = T::now();
            for _ in 0..N {
                deflate_msg(&mut c, black_box(m), &mut f);
                black_box(&f);
            }
            let ck = per_us(t);
            // compress, new state per message
            let t = T::now();
            for _ in 0..N {
                let mut c = new_c(level, wb_c);
                deflate_msg(&mut c, black_box(m), &mut f);
                black_box(&f);
            }
            let cn = per_us(t);
            // decompress, state kept
            let t = T::now();
            for _ in 0..N {
                inflate_msg(&mut d, black_box(&z), &mut out);
                black_box(&out);
            }
            let dk = per_us(t);
            let t = T::now();
            for _ in 0..N {
                let mut d = new_d(wb_d);
                inflate_msg(&mut d, black_box(&z), &mut out);
                black_box(&out);
            }
            let dn = per_us(t);
            println!(
                "  compress   {ck:6.2} µs (state kept+reset)  {cn:6.2} µs (new state each message)"
            );
            println!(
                "  decompress {dk:6.2} µs (state kept+reset)  {dn:6.2} µs (new state each message)"
            );
            if level == 6 {
                // miniz_oxide core, one-shot, output buffer is the window
                use miniz_oxide::inflate::core::{decompress, inflate_flags::*, DecompressorOxide};
                let mut zz = z.clone();
                zz.extend_from_slice(&TAIL);
                let mut st = Box::new(DecompressorOxide::new());
                let mut buf = vec![0u8; 64 * 1024]; // = max_message_size bound
                let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT;
                let (_, _, n) = decompress(&mut st, &zz, &mut buf, 0, flags);
                assert_eq!(&buf[..n], m);
                let t = T::now();
                for _ in 0..N {
                    st.init();
                    let (_, _, n) = decompress(&mut st, black_box(&zz), &mut buf, 0, flags);
                    black_box(n);
                }
                println!(
                    "  decompress {:6.2} µs (miniz_oxide core, non-wrapping output, {} B state)",
                    per_us(t),
                    std::mem::size_of::<DecompressorOxide>()
                );
            }
        }
        // zlib-rs direct (public API): Deflate::new_with_config lets us pick memLevel, flate2 does not
        #[cfg(feature = "zrs")]
        {
            use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Status};
            for (wb, ml) in [(9i32, 1i32), (9, 2), (9, 8), (15, 8)] {
                let cfg = DeflateConfig { level: 6, window_bits: -wb, mem_level: ml, ..Default::default() };
                let (mut c, held, _, na) = heap(|| Deflate::new_with_config(cfg));
                let mut out = vec![0u8; m.len() + 64];
                let run = |c: &mut Deflate, out: &mut [u8]| -> usize {
                    let st = c.compress(black_box(m), out, DeflateFlush::SyncFlush).unwrap();
                    assert_eq!(st, Status::Ok);
                    assert_eq!(c.total_in() as usize, m.len());
                    let n = c.total_out() as usize;
                    assert_eq!(&out[n - 4..n], &TAIL);
                    c.reset();
                    n - 4
                };
                let len = run(&mut c, &mut out);
                // check it inflates
                let mut d = new_d(15);
                let mut back = Vec::with_capacity(m.len() + 64);
                inflate_msg(&mut d, &out[..len], &mut back);
                assert_eq!(back, m);
                let t = T::now();
                for _ in 0..N {
                    black_box(run(&mut c, &mut out));
                }
                let kept = per_us(t);
                let t = T::now();
                for _ in 0..N {
                    let mut c = Deflate::new_with_config(cfg);
                    black_box(run(&mut c, &mut out));
                }
                let fresh = per_us(t);
                println!(
                    "  zlib-rs Deflate level 6 wbits {wb} memLevel {ml}: {len} B payload, heap {held} B ({na} allocs); {kept:.2} µs kept+reset, {fresh:.2} µs new each message"
                );
            }
        }
    }
}
