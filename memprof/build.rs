//! Builds the kernel side (memprof-ebpf) for the BPF target with aya-build, as aya's template
//! does. The object lands in OUT_DIR and is embedded by `attach::EBPF_OBJECT`.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).join("../memprof-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    let common = Path::new(&manifest).join("../memprof-common");
    println!("cargo:rerun-if-changed={}", common.display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "memprof-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
