//! Stacks that are right: memprof unwinds with the call frame information (`.eh_frame`), so
//! stacks are whole with or without frame pointers; C++ names are demangled and inlined frames
//! reported; JavaScript is named from V8's own frames, even where V8 writes a perf map; a stripped binary still gives
//! whole stacks, as `module+0xoffset` frames.
//!
//! Run serially: `cargo test -p memprof-tests --test stacks -- --test-threads=1`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    process::Command,
};

use memprof_tests::*;
use serde_json::Value;

/// Writes `text` straight to the process's stderr (not through the test harness's capture), so
/// that it shows in `cargo test` output even when the test passes.
fn report(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// Whether `func` in `bin` sets up a frame pointer (`mov %rsp,%rbp`), from `objdump -d`: makes
/// sure the two builds of `frame_pointers_do_not_matter` differ in what they claim to.
fn sets_up_frame_pointer(bin: &Path, func: &str) -> bool {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run objdump (binutils): {e}"));
    assert!(out.status.success(), "objdump -d {} failed", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("<{func}>:");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.ends_with(&header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !body.is_empty(),
        "no function {func} in the disassembly of {}",
        bin.display()
    );
    body.iter().any(|l| l.contains("mov    %rsp,%rbp"))
}

/// The `n` largest stacks, one frame per line (long C++ names cut), for assertion messages about
/// programs with deep stacks.
fn describe_top_stacks(summary: &Value, n: usize) -> String {
    let mut all: Vec<&Value> = stacks(summary).iter().collect();
    all.sort_by_key(|s| std::cmp::Reverse(s["bytes"].as_u64().unwrap_or(0)));
    let mut out = String::new();
    for s in all.iter().take(n) {
        out += &format!(
            "{} B, {} allocs, unwind {}, truncated {}:\n",
            s["bytes"], s["allocations"], s["unwind"], s["truncated"]
        );
        for (i, f) in frames(s).iter().enumerate() {
            let cut: String = f.chars().take(120).collect();
            let module = s["frame_details"][i]["module"].as_str().unwrap_or("?");
            out += &format!("    {cut}  [{module}]\n");
        }
    }
    if all.len() > n {
        out += &format!("({} more stacks)\n", all.len() - n);
    }
    out
}

/// The position of the first frame of `func` in `frames` (root → leaf).
fn position(frames: &[&str], func: &str) -> Option<usize> {
    frames.iter().position(|f| frame_is(f, func))
}

/// Per leak site: bytes, and whether every stack of the site is whole; plus a failure for each
/// site stack that does not hold `start_thread`, `worker` and the site, in that order from the
/// root.
fn site_stacks(label: &str, p: &Profiled) -> (BTreeMap<String, (u64, bool)>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut failures = Vec::new();
    for (site, _) in p.truth.leak_sites() {
        let stacks = stacks_with(&p.summary, site);
        if stacks.is_empty() {
            failures.push(format!("{label}: {site}: no stack has a frame of it"));
        }
        let mut whole = true;
        for s in &stacks {
            let f = frames(s);
            let (root, worker, leaf) = (
                position(&f, "start_thread"),
                position(&f, "worker"),
                position(&f, site),
            );
            match (root, worker, leaf) {
                (Some(r), Some(w), Some(l)) if r < w && w < l => {}
                _ => failures.push(format!(
                    "{label}: {site}: expected start_thread → worker → {site} (root → leaf), \
                     positions {root:?}, {worker:?}, {leaf:?} in {}",
                    f.join(";")
                )),
            }
            whole &= stack_is_whole(s);
        }
        out.insert(site.to_string(), (bytes_of(&stacks), whole));
    }
    (out, failures)
}

/// Profiles `bin` (a build of leaky.c) in a fresh cgroup with memprof's default options.
fn profile_leaky(bin: &Path, label: &str) -> Profiled {
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_path(bin, &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], label);
    drop(fx);
    drop(cg);
    p
}

/// leaky.c with and without frame pointers: the same stacks, the same bytes, all of them whole.
#[test]
fn frame_pointers_do_not_matter() {
    require_root();
    let fp = fixture_variant("leaky", "fp", &["-fno-omit-frame-pointer"]);
    // -O2 as well: what optimized code without frame pointers looks like (the sites stay
    // noipa functions, -fno-inline stays).
    let nofp = fixture_variant("leaky", "nofp", &["-O2", "-fomit-frame-pointer"]);
    for func in ["worker", "leak_malloc", "leak_mmap"] {
        assert!(
            sets_up_frame_pointer(&fp, func),
            "{}: {func} should set up a frame pointer",
            fp.display()
        );
        assert!(
            !sets_up_frame_pointer(&nofp, func),
            "{}: {func} should not set up a frame pointer",
            nofp.display()
        );
    }

    let mut results = Vec::new();
    for (bin, label, title) in [
        (
            &fp,
            "stacks-fp",
            "leaky.c with frame pointers (-O1 -fno-omit-frame-pointer)",
        ),
        (
            &nofp,
            "stacks-nofp",
            "leaky.c without frame pointers (-O2 -fomit-frame-pointer)",
        ),
    ] {
        let p = profile_leaky(bin, label);
        let (sites, failures) = site_stacks(label, &p);
        results.push((title, p, sites, failures));
    }

    let (fp_title, fp_run, fp_sites, fp_failures) = &results[0];
    let (nofp_title, nofp_run, nofp_sites, nofp_failures) = &results[1];
    let mut table = format!(
        "\nframe_pointers_do_not_matter: bytes per site (stacks start_thread → worker → site)\n\
         {:<22} {:>12} {:>12} {:>12} {:>7} {:>7}\n",
        "site", "truth B", "bytes fp", "bytes nofp", "whole", "whole"
    );
    table += &format!(
        "{:<22} {:>12} {:>12} {:>12} {:>7} {:>7}\n",
        "", "", "", "", "fp", "nofp"
    );
    for (site, truth) in fp_run.truth.leak_sites() {
        let (b_fp, w_fp) = fp_sites[site];
        let (b_nofp, w_nofp) = nofp_sites[site];
        table += &format!(
            "{site:<22} {truth:>12} {b_fp:>12} {b_nofp:>12} {:>7} {:>7}\n",
            if w_fp { "yes" } else { "NO" },
            if w_nofp { "yes" } else { "NO" },
        );
    }
    let shares: Vec<Option<f64>> = [fp_run, nofp_run]
        .iter()
        .map(|p| whole_bytes_share(&p.summary))
        .collect();
    table += &format!(
        "whole_bytes_share: fp {:?}, nofp {:?}\n",
        shares[0], shares[1]
    );
    report(&table);

    // Each build on its own: the bytes per site against the ground truth.
    assert_accurate(fp_title, &fp_run.truth, &fp_run.summary);
    assert_accurate(nofp_title, &nofp_run.truth, &nofp_run.summary);

    let mut failures: Vec<String> = fp_failures.iter().chain(nofp_failures).cloned().collect();
    for (site, &(b_fp, w_fp)) in fp_sites {
        let (b_nofp, w_nofp) = nofp_sites[site];
        if error_pct(b_fp, b_nofp).abs() > TOLERANCE_PCT {
            failures.push(format!(
                "{site}: {b_fp} B with frame pointers, {b_nofp} B without"
            ));
        }
        if !w_fp {
            failures.push(format!("{site}: a stack is not whole in the fp build"));
        }
        if !w_nofp {
            failures.push(format!("{site}: a stack is not whole in the nofp build"));
        }
    }
    for ((title, p), share) in [(fp_title, fp_run), (nofp_title, nofp_run)]
        .into_iter()
        .zip(&shares)
    {
        if !share.is_some_and(|share| share >= 0.99) {
            failures.push(format!(
                "{title}: whole_bytes_share {share:?} is not >= 0.99 (stack_quality {})",
                p.summary["stack_quality"]
            ));
        }
        // No --unwind option: the default is the CFI unwinder.
        if p.summary["stack_quality"]["unwinder"] != "dwarf" {
            failures.push(format!(
                "{title}: the default unwinder should be \"dwarf\" (stack_quality {})",
                p.summary["stack_quality"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "frame pointers should not matter:\n  {}\n{table}\nfp stacks:\n{}\nnofp stacks:\n{}",
        failures.join("\n  "),
        describe_stacks(&fp_run.summary),
        describe_stacks(&nofp_run.summary)
    );
}

/// Whether a frame detail is `leakcpp::Hoard<…>::grow(…)`, demangled.
fn is_hoard_grow(d: &Value) -> bool {
    let f = detail_function(d);
    f.contains("leakcpp::Hoard<") && f.contains("::grow(")
}

/// Whether a frame detail is the inlined `leakcpp::detail::stash_bytes`.
fn is_inlined_stash(d: &Value) -> bool {
    detail_function(d).contains("stash_bytes") && detail_inlined(d)
}

/// leaky_cpp.cpp (g++ -O2, no frame pointers): demangled template method names, and a frame for
/// a function that exists only inlined.
#[test]
fn cpp_names_are_demangled_and_inlined() {
    require_root();
    let bin = fixture("leaky_cpp");
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_path(&bin, &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "stacks-cpp");
    let stacks_text = describe_stacks(&p.summary);

    let grow = stacks_where(&p.summary, is_hoard_grow);
    let stash = stacks_where(&p.summary, is_inlined_stash);
    let truth_grow = p.truth.sites["Hoard::grow"];
    let truth_stash = p.truth.sites["stash_bytes"];
    let (grow_b, stash_b) = (bytes_of(&grow), bytes_of(&stash));
    let (grow_n, stash_n) = (allocations_of(&grow), allocations_of(&stash));
    report(&format!(
        "\ncpp_names_are_demangled_and_inlined\n\
         {:<34} {:>12} {:>12} {:>9} {:>7} {:>7}\n\
         {:<34} {truth_grow:>12} {grow_b:>12} {:>+9.3} {:>7} {grow_n:>7}\n\
         {:<34} {truth_stash:>12} {stash_b:>12} {:>+9.3} {:>7} {stash_n:>7}\n",
        "site",
        "expected B",
        "measured B",
        "error %",
        "allocs",
        "meas.",
        "leakcpp::Hoard<…>::grow(…)",
        error_pct(truth_grow, grow_b),
        p.truth.allocations["Hoard::grow"],
        "stash_bytes (inlined)",
        error_pct(truth_stash, stash_b),
        p.truth.allocations["stash_bytes"],
    ));

    let mut failures = Vec::new();
    if grow.is_empty() {
        failures.push(
            "no frame's function is demangled `leakcpp::Hoard<…>::grow(…)` (mangled names, or \
             no frame for it?)"
                .to_string(),
        );
    }
    if stash.is_empty() {
        failures
            .push("no inlined frame (`inlined: true`) whose function is stash_bytes".to_string());
    }
    for (what, truth, measured, n_truth, n) in [
        (
            "Hoard::grow",
            truth_grow,
            grow_b,
            p.truth.allocations["Hoard::grow"],
            grow_n,
        ),
        (
            "stash_bytes",
            truth_stash,
            stash_b,
            p.truth.allocations["stash_bytes"],
            stash_n,
        ),
    ] {
        if error_pct(truth, measured).abs() > TOLERANCE_PCT {
            failures.push(format!(
                "{what}: expected {truth} B, measured {measured} B ({:+.3} %)",
                error_pct(truth, measured)
            ));
        }
        if error_pct(n_truth, n).abs() > TOLERANCE_PCT {
            failures.push(format!(
                "{what}: expected {n_truth} live allocations, measured {n}"
            ));
        }
    }
    for s in grow.iter().chain(&stash) {
        let details = frame_details(s);
        let f = frames(s);
        if !stack_is_whole(s) {
            failures.push(format!(
                "stack is not whole (unwind {:?}, truncated {}): {}",
                s["unwind"],
                s["truncated"],
                f.join(";")
            ));
        }
        let pos = |pred: &dyn Fn(&Value) -> bool| details.iter().position(pred);
        let root = position(&f, "start_thread");
        let worker = pos(&|d| detail_function(d).contains("leakcpp::worker("));
        if !matches!((root, worker), (Some(r), Some(w)) if r < w) {
            failures.push(format!(
                "expected start_thread → leakcpp::worker(int) (root → leaf), positions \
                 {root:?}, {worker:?}: {}",
                f.join(";")
            ));
        }
        // The inlined helper sits leafward of the (not inlined) function it was inlined into.
        if let Some(i) = pos(&is_inlined_stash) {
            let caller =
                pos(&|d| detail_function(d).contains("leakcpp::fill_cache(") && !detail_inlined(d));
            if !matches!(caller, Some(c) if c < i) {
                failures.push(format!(
                    "the inlined stash_bytes frame (#{i}) should follow leakcpp::fill_cache(int) \
                     (#{caller:?}): {}",
                    f.join(";")
                ));
            }
        }
        for d in details {
            let func = detail_function(d);
            if func.starts_with("_Z") {
                failures.push(format!("mangled function name {func:?} in {}", f.join(";")));
            }
        }
    }
    // The display frames (folded stacks, flame graph) carry the demangled name too.
    let folded = std::fs::read_to_string(p.dir.join("leaks.folded")).expect("leaks.folded");
    if !folded
        .lines()
        .any(|l| l.contains("leakcpp::Hoard<") && l.contains("::grow("))
    {
        failures.push("leaks.folded has no demangled leakcpp::Hoard<…>::grow(…) frame".into());
    }
    match module_entry(&p.summary, &bin) {
        Some(m) if m["symbols"] == "dwarf" => {}
        other => failures.push(format!(
            "modules should list {} with symbols \"dwarf\": {other:?}",
            bin.display()
        )),
    }
    assert!(
        failures.is_empty(),
        "C++ stacks are not right:\n  {}\nstacks:\n{stacks_text}",
        failures.join("\n  ")
    );
    drop(fx);
}

/// A Node.js script started with `--perf-basic-prof`: the JavaScript function that leaks is named,
/// and where both V8's frames and its perf map could name it, V8's frames win.
#[test]
fn node_js_function_names() {
    require_root();
    let node_version = Command::new(node_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_node(
        "leak.js",
        &["--perf-basic-prof", "--interpreted-frames-native-stack"],
        &[],
        Some(&cg),
    );
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "stacks-node");
    let stacks_text = describe_top_stacks(&p.summary, 5);

    // The fixture's own side: V8 wrote a perf map that names the function.
    let map_path = perf_map_path(fx.pid());
    let map = std::fs::read_to_string(&map_path).unwrap_or_else(|e| {
        panic!(
            "node {node_version} wrote no perf map {} ({e}); is --perf-basic-prof supported?",
            map_path.display()
        )
    });
    let map_lines: Vec<&str> = map.lines().filter(|l| l.contains("leakyHandler")).collect();
    assert!(
        !map_lines.is_empty(),
        "{} has no leakyHandler entry",
        map_path.display()
    );

    let truth = p.truth.sites["leakyHandler"];
    let js: Vec<&Value> = stacks(&p.summary)
        .iter()
        .filter(|s| frames(s).iter().any(|f| f.contains("leakyHandler")))
        .collect();
    let measured = bytes_of(&js);
    let in_order: Vec<&Value> = js
        .iter()
        .copied()
        .filter(|s| {
            let f = frames(s);
            let caller = f.iter().position(|f| f.contains("serveRequests"));
            let handler = f.iter().rposition(|f| f.contains("leakyHandler"));
            matches!((caller, handler), (Some(c), Some(h)) if c < h)
        })
        .collect();
    let in_order_bytes = bytes_of(&in_order);
    report(&format!(
        "\nnode_js_function_names (node {node_version})\n\
         perf map {}: {} lines, e.g. {:?}\n\
         leakyHandler: truth {truth} B, measured {measured} B ({:.1} %), with serveRequests \
         → leakyHandler {in_order_bytes} B; {} stack(s)\n",
        map_path.display(),
        map.lines().count(),
        map_lines.first().copied().unwrap_or(""),
        measured as f64 / truth as f64 * 100.0,
        js.len()
    ));

    let mut failures = Vec::new();
    if (measured as f64) < 0.9 * truth as f64 {
        failures.push(format!(
            "stacks with a leakyHandler frame hold {measured} B, less than 90 % of {truth} B"
        ));
    }
    if (in_order_bytes as f64) < 0.9 * truth as f64 {
        failures.push(format!(
            "stacks with serveRequests → leakyHandler (root → leaf) hold {in_order_bytes} B, \
             less than 90 % of {truth} B"
        ));
    }
    // V8's own frames win over the perf map: the JS frames are read from V8 (module `[js]`,
    // with the file and line), not named from the map (`[jit]`).
    for s in &js {
        for d in frame_details(s) {
            if detail_function(d).contains("leakyHandler")
                && (d["module"] != "[js]" || !d["file"].as_str().is_some_and(|f| f.ends_with("leak.js")))
            {
                failures.push(format!(
                    "a leakyHandler frame is not a JS frame read from V8 (module \"[js]\", file leak.js): {d}"
                ));
            }
        }
    }
    let folded = std::fs::read_to_string(p.dir.join("leaks.folded")).expect("leaks.folded");
    if !folded.lines().any(|l| l.contains("leakyHandler")) {
        failures.push("leaks.folded has no leakyHandler frame".into());
    }
    // Mixed stacks (node's C++ without frame pointers, V8 builtins and JIT code with them) come
    // out whole: down to `_start` through the JS frames.
    let whole: Vec<&Value> = in_order.iter().copied().filter(|s| stack_is_whole(s)).collect();
    if (bytes_of(&whole) as f64) < 0.9 * truth as f64 {
        failures.push(format!(
            "only {} B of the serveRequests → leakyHandler stacks are whole (truth {truth} B)",
            bytes_of(&whole)
        ));
    }
    if !whole.iter().any(|s| frames(s).first().is_some_and(|f| f.contains("_start"))) {
        failures.push("no whole leakyHandler stack reaches _start".into());
    }
    assert!(
        failures.is_empty(),
        "JavaScript frames are not right:\n  {}\nstacks:\n{stacks_text}",
        failures.join("\n  ")
    );
    drop(fx);
}

/// leaky.c without any symbols: every byte is still found, on whole stacks whose frames in the
/// binary read `leaky-stripped+0x…`.
#[test]
fn stripped_binary_gives_module_offsets() {
    require_root();
    let bin = stripped_fixture("leaky");
    let base = bin.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(base, "leaky-stripped");
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_path(&bin, &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "stacks-stripped");
    let stacks_text = describe_stacks(&p.summary);

    let truth_total: u64 = p.truth.sites.values().sum();
    let live = p.summary["live_bytes"]
        .as_u64()
        .expect("summary.live_bytes");
    let prefix = format!("{base}+0x");
    let is_offset_frame = |f: &str| {
        f.strip_prefix(&prefix)
            .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let is_stripped_module = |d: &Value| {
        d["module"].as_str().is_some_and(|m| {
            Path::new(m)
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == base)
        })
    };

    let mut failures = Vec::new();
    let mut offsets = BTreeSet::new();
    let mut in_binary = Vec::new();
    for s in stacks(&p.summary) {
        let f = frames(s);
        let details = frame_details(s);
        if f.len() != details.len() {
            failures.push(format!(
                "{} frames but {} frame_details: {}",
                f.len(),
                details.len(),
                f.join(";")
            ));
        }
        let mut here = false;
        for (frame, d) in f.iter().zip(details) {
            if is_stripped_module(d) || frame.starts_with(&base) {
                here = true;
                if is_offset_frame(frame) {
                    offsets.insert(frame.to_string());
                } else {
                    failures.push(format!(
                        "a frame in {base} should read `{prefix}…`: {frame:?} ({d})"
                    ));
                }
            }
        }
        if here {
            in_binary.push(s);
        }
    }
    let in_binary_bytes = bytes_of(&in_binary);
    let share = whole_bytes_share(&p.summary);
    let leak_sites = p.truth.leak_sites().count();
    report(&format!(
        "\nstripped_binary_gives_module_offsets\n\
         truth total {truth_total} B, live_bytes {live} B ({:+.3} %), stacks through {base} \
         {in_binary_bytes} B, {} distinct {prefix}… frames, whole_bytes_share {share:?}\n",
        error_pct(truth_total, live),
        offsets.len()
    ));

    if error_pct(truth_total, live).abs() > TOLERANCE_PCT {
        failures.push(format!(
            "live_bytes {live} B is not within {TOLERANCE_PCT} % of the fixture's {truth_total} B"
        ));
    }
    if error_pct(truth_total, in_binary_bytes).abs() > TOLERANCE_PCT {
        failures.push(format!(
            "stacks through {base} hold {in_binary_bytes} B, not within {TOLERANCE_PCT} % of \
             {truth_total} B"
        ));
    }
    // A site function and worker per stack at least: as many distinct return addresses as sites.
    if offsets.len() < leak_sites {
        failures.push(format!(
            "only {} distinct `{prefix}…` frames for {leak_sites} leak sites: {offsets:?}",
            offsets.len()
        ));
    }
    // .eh_frame survives strip --strip-all: the stacks are still whole.
    if !share.is_some_and(|share| share >= 0.99) {
        failures.push(format!(
            "whole_bytes_share {share:?} is not >= 0.99 (stack_quality {})",
            p.summary["stack_quality"]
        ));
    }
    // `none`: strip --strip-all leaves no .symtab and no debug info, and .dynsym defines no
    // function (only the copy-relocated `stdout`/`stderr` objects).
    match module_entry(&p.summary, &bin) {
        Some(m) if m["symbols"] == "none" => {}
        other => failures.push(format!(
            "modules should list {} with symbols \"none\": {other:?} (modules: {})",
            bin.display(),
            p.summary["modules"]
        )),
    }
    assert!(
        failures.is_empty(),
        "stripped binary:\n  {}\nstacks:\n{stacks_text}",
        failures.join("\n  ")
    );
    drop(fx);
}

/// A static musl binary: its C library has no CFI, and its `mmap` wrapper is frameless, so the
/// frame pointer at the syscall skips the wrapper's caller. The caller (the program's own
/// `arena_reserve`) is recovered from the stack, in both unwind modes, with exact bytes.
#[test]
fn frameless_syscall_wrapper_keeps_its_caller() {
    require_root();
    let bin = musl_fixture("reserve");
    assert!(sets_up_frame_pointer(&bin, "arena_reserve"), "arena_reserve should keep %rbp");
    for unwind in ["dwarf", "fp"] {
        let cg = TestCgroup::new();
        let mut fx = Fixture::start_path(&bin, &[], Some(&cg));
        let label = format!("musl-reserve-{unwind}");
        let args = ["--cgroup".to_string(), cg.name(), "--unwind".into(), unwind.into()];
        let p = profile_fixture(&mut fx, &args, &label);
        assert_accurate(&format!("static musl reserve.c, --unwind {unwind}"), &p.truth, &p.summary);
        for s in stacks_with(&p.summary, "arena_reserve") {
            let f = frames(s);
            let (worker, site) = (position(&f, "worker"), position(&f, "arena_reserve"));
            assert!(
                matches!((worker, site), (Some(w), Some(a)) if w + 1 == a && a + 1 < f.len()),
                "--unwind {unwind}: expected … → worker → arena_reserve → (the mmap wrapper), got {}",
                f.join(" → ")
            );
        }
        report(&format!(
            "musl reserve.c --unwind {unwind}: arena_reserve {} B of {} B\n",
            site_bytes(&p.summary, "arena_reserve"),
            p.truth.sites["arena_reserve"]
        ));
    }
}
