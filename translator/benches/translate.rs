//! Translation benchmark: parse + translate + print a generated mesh of N services.
//!
//! Each service is one YAML file with three documents: a STATIC ServiceEntry (port 8080, six
//! endpoints labelled across versions v1/v2/v3), a DestinationRule with subsets v1, v2, v3 and
//! a VirtualService with three rules (header, uri and method match), each splitting 80/20
//! between v1 and v2 and mirroring 10% to v3. Services are spread over 100 namespaces.
//!
//! One timed round = `parse_files` + `translate` + `print::resources_to_json` +
//! `print::to_json_string` of the whole mesh, from the input text (generated once, untimed) to
//! the output text. Reports the median of the rounds per stage and the process's peak RSS
//! (`VmHWM`), so run one size per process (`bench/translate.sh` does).
//!
//! ```sh
//! cargo bench -p shadowplane-translator --bench translate -- --services 10000 --rounds 5
//! ```

// A benchmark/test harness reads fixtures and the clock; the purity rule is for the library.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shadowplane_translator::{parse, print, translate, Options, SourceFile};

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

/// `VmHWM` (peak resident set) of this process in KiB, from `/proc/self/status`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

struct Round {
    parse: Duration,
    translate: Duration,
    print: Duration,
    total: Duration,
    output_bytes: usize,
    counts: [usize; 4],
    errors: Vec<String>,
}

fn round(files: &[SourceFile], options: &Options) -> Round {
    let start = Instant::now();
    let parsed = parse::parse_files(files);
    let parsed_at = Instant::now();
    let translation = translate(&parsed, options);
    let translated_at = Instant::now();
    let json = print::resources_to_json(&translation.resources);
    let text = print::to_json_string(&json);
    let printed_at = Instant::now();
    let r = &translation.resources;
    Round {
        parse: parsed_at - start,
        translate: translated_at - parsed_at,
        print: printed_at - translated_at,
        total: printed_at - start,
        output_bytes: text.len(),
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
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut services = vec![1_000usize, 10_000];
    let mut rounds = 5usize;
    let mut header = true;
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
            "| services | input MiB | parse ms | translate ms | print ms | total ms (median of {rounds}) | output MiB | peak RSS MiB | listeners/routes/clusters/CLAs |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    }
    let options = Options::default();
    for n in services {
        let files = generate(n);
        let input_bytes: usize = files.iter().map(|f| f.text.len()).sum();
        let mut results = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            results.push(round(&files, &options));
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
        let peak = peak_rss_kib()
            .map(|k| format!("{:.0}", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".to_string());
        println!(
            "| {n} | {:.1} | {} | {} | {} | {} | {:.1} | {peak} | {l}/{r}/{c}/{e} |",
            input_bytes as f64 / (1024.0 * 1024.0),
            ms(median(results.iter().map(|r| r.parse).collect())),
            ms(median(results.iter().map(|r| r.translate).collect())),
            ms(median(results.iter().map(|r| r.print).collect())),
            ms(median(results.iter().map(|r| r.total).collect())),
            first.output_bytes as f64 / (1024.0 * 1024.0),
        );
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: translate [--services N]... [--rounds R] [--no-header]\n\
         (default: --services 1000 --services 10000 --rounds 5)"
    );
    std::process::exit(2);
}
