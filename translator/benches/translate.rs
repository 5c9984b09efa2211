//! Translation benchmark: parse, translate and serialize a generated mesh of N services.
//!
//! Each service is one YAML file with three documents: a STATIC ServiceEntry (port 8080, six
//! endpoints labelled across versions v1/v2/v3), a DestinationRule with subsets v1, v2, v3 and
//! a VirtualService with three rules (header, uri and method match), each splitting 80/20
//! between v1 and v2 and mirroring 10% to v3. Services are spread over 100 namespaces.
//!
//! One round, from the input text (generated once, untimed) to the output, timed per phase:
//! - parse: `parse::parse_files`;
//! - translate: `translate` (lowering to the model, then building the Envoy protos);
//! - encode: `canonical::encode` of every resource, what `serve` does with a translation
//!   (`Snapshot::from_resources`);
//! - JSON: `print::write_resources_json` to a writer that counts the bytes and drops them,
//!   what `translate --output json` does to stdout (reported on its own, not part of the
//!   headline).
//!
//! The headline, "translation plus serialization", is parse + translate + encode. Everything
//! those phases produce stays alive until the round ends, as in `serve` (which keeps the parsed
//! files, the translation and the snapshot). Reports the median of the rounds per phase and
//! peak RSS (`VmHWM`): of the headline phases and of the JSON phase, each measured in the
//! first round (the peak is reset through `/proc/self/clear_refs` before each; later rounds
//! would start with the heap the allocator kept from the earlier ones), so run one size per
//! process (`bench/translate.sh` does).
//!
//! ```sh
//! cargo bench -p shadowplane-translator --bench translate -- --services 10000 --rounds 5
//! ```

// A benchmark/test harness reads fixtures and the clock; the purity rule is for the library.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shadowplane_translator::{canonical, parse, print, translate, Options, Resources, SourceFile};

const NAMESPACES: usize = 100;

fn service_yaml(i: usize) -> String {
    let ns = format!("ns-{}", i % NAMESPACES);
    let name = format!("svc-{i}");
    let third = (i % 250) as u8;
    let mut endpoints = String::new();
    for (e, version) in ["v1", "v1", "v2", "v2", "v3", "v3"].iter().enumerate() {
        endpoints.push_str(&format!(
            "  - address: 10.{}.{third}.{}\n    ports:\n      http: 9080\n    labels:\n      app: {name}\n      version: {version}\n",
            (i / 250) % 250,
            e + 1,
        ));
    }
    let rule = |rule_name: &str, matcher: &str| {
        format!(
            "  - name: {rule_name}\n    match:\n    - {matcher}\n    route:\n    - destination:\n        host: {name}\n        subset: v1\n      weight: 80\n    - destination:\n        host: {name}\n        subset: v2\n      weight: 20\n    mirror:\n      host: {name}\n      subset: v3\n    mirrorPercentage:\n      value: 10\n"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  hosts:\n  - {name}.{ns}.svc.cluster.local\n  location: MESH_INTERNAL\n\
         \x20 ports:\n  - number: 8080\n    name: http\n    protocol: HTTP\n\
         \x20 resolution: STATIC\n  endpoints:\n{endpoints}\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  host: {name}\n  subsets:\n\
         \x20 - name: v1\n    labels:\n      version: v1\n\
         \x20 - name: v2\n    labels:\n      version: v2\n\
         \x20 - name: v3\n    labels:\n      version: v3\n\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  hosts:\n  - {name}\n  http:\n{}{}{}",
        rule(
            "by-header",
            "headers:\n        x-canary:\n          exact: \"true\""
        ),
        rule("by-uri", "uri:\n        prefix: /api/v2"),
        rule("by-method", "method:\n        exact: POST"),
    )
}

/// The mesh as one file per service.
pub fn generate(services: usize) -> Vec<SourceFile> {
    (0..services)
        .map(|i| SourceFile {
            path: format!("mesh/svc-{i}.yaml"),
            text: service_yaml(i),
        })
        .collect()
}

/// `VmHWM` (peak resident set) or `VmRSS` of this process in KiB, from `/proc/self/status`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Reset `VmHWM` to the current resident set (Linux: `5` in `/proc/<pid>/clear_refs`), so the
/// next reading is the peak of what runs in between. `false` where that is not available.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds, first
/// field): unlike wall time, it does not count the time spent waiting for a core that the
/// other builds on the machine took.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// A point in time, by the wall clock and by this thread's CPU time.
#[derive(Clone, Copy)]
struct Mark {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    fn since(self, start: Mark) -> Time {
        Time {
            wall: self.wall - start.wall,
            cpu: self.cpu.zip(start.cpu).map(|(end, start)| end - start),
        }
    }
}

/// How long a phase took.
#[derive(Clone, Copy, Default)]
struct Time {
    wall: Duration,
    cpu: Option<Duration>,
}

impl std::ops::Add for Time {
    type Output = Time;
    fn add(self, other: Time) -> Time {
        Time {
            wall: self.wall + other.wall,
            cpu: self.cpu.zip(other.cpu).map(|(a, b)| a + b),
        }
    }
}

/// Resident-set readings (KiB) around the phases of the first round.
#[derive(Default, Clone, Copy)]
struct Memory {
    /// Before parsing: the input text, the binary, the descriptor pool (forced beforehand).
    start: Option<u64>,
    /// Resident after each headline phase (what it built is still alive).
    after_parse: Option<u64>,
    after_translate: Option<u64>,
    after_encode: Option<u64>,
    /// Peak during parse + translate + encode.
    headline_peak: Option<u64>,
    /// Peak during JSON printing (what the headline left alive, plus the printer's own).
    json_peak: Option<u64>,
}

struct Round {
    parse: Time,
    translate: Time,
    encode: Time,
    json: Time,
    encoded_bytes: usize,
    json_bytes: usize,
    counts: [usize; 4],
    errors: Vec<String>,
    memory: Memory,
}

/// A writer that only counts bytes.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every resource encoded as `serve` encodes it for its snapshot.
fn encode_all(r: &Resources) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(
        r.listeners.len() + r.routes.len() + r.clusters.len() + r.endpoints.len(),
    );
    out.extend(r.listeners.iter().map(canonical::encode));
    out.extend(r.routes.iter().map(canonical::encode));
    out.extend(r.clusters.iter().map(canonical::encode));
    out.extend(r.endpoints.iter().map(canonical::encode));
    out
}

fn round(files: &[SourceFile], options: &Options, measure_memory: bool, json: bool) -> Round {
    let mut memory = Memory::default();
    let tracking = measure_memory && reset_peak_rss();
    let rss = |enabled: bool| if enabled { status_kib("VmRSS") } else { None };
    memory.start = rss(tracking);
    let start = Mark::now();
    let parsed = parse::parse_files(files);
    let parsed_at = Mark::now();
    memory.after_parse = rss(tracking);
    let translated_from = Mark::now();
    let translation = translate(&parsed, options);
    let translated_at = Mark::now();
    memory.after_translate = rss(tracking);
    let encoded_from = Mark::now();
    let encoded = encode_all(&translation.resources);
    let encoded_at = Mark::now();
    if tracking {
        memory.after_encode = status_kib("VmRSS");
        memory.headline_peak = status_kib("VmHWM");
        reset_peak_rss();
    }
    let json_from = Mark::now();
    // Counted and dropped, as the CLI writes it to a file or stdout.
    let mut output = Counter(0);
    if json {
        // Counting cannot fail.
        print::write_resources_json(&translation.resources, &mut output)
            .expect("writing JSON to a counter");
    }
    let json_at = Mark::now();
    if tracking && json {
        memory.json_peak = status_kib("VmHWM");
    }
    let r = &translation.resources;
    let result = Round {
        parse: parsed_at.since(start),
        translate: translated_at.since(translated_from),
        encode: encoded_at.since(encoded_from),
        json: json_at.since(json_from),
        encoded_bytes: encoded.iter().map(Vec::len).sum(),
        json_bytes: output.0,
        counts: [
            r.listeners.len(),
            r.routes.len(),
            r.clusters.len(),
            r.endpoints.len(),
        ],
        errors: translation
            .diagnostics
            .iter()
            .filter(|d| d.is_error() || d.severity == shadowplane_translator::Severity::Warning)
            .take(5)
            .map(|d| d.to_string())
            .collect(),
        memory,
    };
    drop((output, encoded, translation, parsed));
    result
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// "wall (cpu)" in milliseconds: medians over the rounds, each taken on its own.
fn cell(times: Vec<Time>) -> String {
    let wall = median(times.iter().map(|t| t.wall).collect());
    let cpu: Option<Vec<Duration>> = times.iter().map(|t| t.cpu).collect();
    match cpu {
        Some(cpu) => format!("{} ({})", ms(wall), ms(median(cpu))),
        None => ms(wall),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0}", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".to_string())
}

fn main() {
    let mut services = vec![1_000usize, 10_000];
    let mut rounds = 5usize;
    let mut header = true;
    let mut json = true;
    let mut args = std::env::args().skip(1);
    let mut explicit = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--services" => {
                let n = args.next().and_then(|v| v.parse().ok());
                explicit.push(n.unwrap_or_else(|| usage("--services needs a number")));
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&r| r > 0)
                    .unwrap_or_else(|| usage("--rounds needs a positive number"));
            }
            "--no-header" => header = false,
            // For profiling the headline phases alone.
            "--no-json" => json = false,
            // `cargo bench` passes `--bench`; libtest filters do not apply here.
            "--bench" => {}
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if !explicit.is_empty() {
        services = explicit;
    }
    if header {
        println!(
            "Headline = parse + translate + encode (canonical protobuf, as serve does); JSON printing is its own column.\n\
             Times in ms: median wall time of {rounds} rounds (median CPU time of this thread in parentheses: \
             the wall time minus the waits for a core other processes had).\n\
             RSS in MiB, first round: before parsing (input text loaded); resident after parse / translate / \
             encode (all kept alive, as serve does); VmHWM peak of the headline phases; VmHWM peak while printing JSON.\n"
        );
        println!(
            "| services | input MiB | parse | translate | encode | **headline** | RSS before | RSS after parse / translate / encode | **headline peak RSS** | JSON | JSON peak RSS | encoded MiB | JSON MiB | listeners/routes/clusters/CLAs |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    }
    let options = Options::default();
    // Untimed: the descriptor pool is decoded once per process, on first use.
    let _ = print::descriptor_pool();
    for n in services {
        let files = generate(n);
        let input_bytes: usize = files.iter().map(|f| f.text.len()).sum();
        let mut results = Vec::with_capacity(rounds);
        for i in 0..rounds {
            results.push(round(&files, &options, i == 0, json));
        }
        let first = &results[0];
        if !first.errors.is_empty() {
            eprintln!(
                "the generated mesh does not translate cleanly:\n{}",
                first.errors.join("\n")
            );
            std::process::exit(1);
        }
        let [l, r, c, e] = first.counts;
        if l == 0 || r == 0 || c < 4 * n || e < n {
            eprintln!(
                "the translation is incomplete: {l} listeners, {r} route configs, {c} clusters, \
                 {e} CLAs for {n} services (expected at least 1, 1, {}, {n})",
                4 * n
            );
            std::process::exit(1);
        }
        let per = |f: fn(&Round) -> Time| cell(results.iter().map(f).collect());
        let memory = first.memory;
        let json_cell = |text: String| if json { text } else { "-".to_string() };
        println!(
            "| {n} | {:.1} | {} | {} | {} | **{}** | {} | {} / {} / {} | **{}** | {} | {} | {:.1} | {} | {l}/{r}/{c}/{e} |",
            input_bytes as f64 / (1024.0 * 1024.0),
            per(|r| r.parse),
            per(|r| r.translate),
            per(|r| r.encode),
            per(|r| r.parse + r.translate + r.encode),
            mib(memory.start),
            mib(memory.after_parse),
            mib(memory.after_translate),
            mib(memory.after_encode),
            mib(memory.headline_peak),
            json_cell(per(|r| r.json)),
            json_cell(mib(memory.json_peak)),
            first.encoded_bytes as f64 / (1024.0 * 1024.0),
            json_cell(format!("{:.1}", first.json_bytes as f64 / (1024.0 * 1024.0))),
        );
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: translate [--services N]... [--rounds R] [--no-header] [--no-json]\n\
         (default: --services 1000 --services 10000 --rounds 5)"
    );
    std::process::exit(2);
}
