//! The committed PTX of the kernels (`scripts/build-ptx.sh`, rustc's `nvptx64-nvidia-cuda` target)
//! for the host side: a CUDA backend loads it without the nightly toolchain, and reads each entry
//! point's parameter list from it to check its launches. Host only (not part of the PTX build).
//!
//! The modules are plain PTX text; the driver JIT-compiles them for the GPU it runs on, so the
//! sm_80 module also runs on later GPUs and the sm_90 one is picked where it applies.

/// One committed PTX module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtxModule {
    /// The `.target` (`sm_80`, `sm_90`).
    pub arch: &'static str,
    /// The compute capability it needs, as `10 * major + minor`.
    pub compute: u32,
    /// The file name under `gpu-kernels/ptx/`.
    pub file: &'static str,
    /// The PTX text.
    pub ptx: &'static str,
}

/// Every committed module, lowest compute capability first.
pub const MODULES: &[PtxModule] = &[
    PtxModule {
        arch: "sm_80",
        compute: 80,
        file: "resca_kernels.sm_80.ptx",
        ptx: include_str!("../ptx/resca_kernels.sm_80.ptx"),
    },
    PtxModule {
        arch: "sm_90",
        compute: 90,
        file: "resca_kernels.sm_90.ptx",
        ptx: include_str!("../ptx/resca_kernels.sm_90.ptx"),
    },
];

/// `gpu-kernels/ptx/manifest.json`: every entry point's parameters (Rust name and type, PTX type,
/// size), the toolchain that built the modules and the hash of the source it built them from.
pub const MANIFEST: &str = include_str!("../ptx/manifest.json");

/// The module for a GPU of compute capability `major.minor`: the newest one it can run (sm_90 on
/// Hopper and later, sm_80 on Ampere and Ada), `None` below sm_80.
pub fn module_for(major: u32, minor: u32) -> Option<&'static PtxModule> {
    let compute = 10 * major + minor;
    MODULES.iter().rev().find(|m| m.compute <= compute)
}

/// A PTX parameter's state-space type: `.u32`, `.f32`, `.u64`, ..., or `.b8` for a byte array
/// (structs passed by value, such as `Global`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtxParam<'a> {
    /// The PTX name (`<entry>_param_<i>`).
    pub name: &'a str,
    /// The element type as written (`.u32`, `.f32`, `.b8`, ...).
    pub ty: &'a str,
    /// Bytes the parameter occupies.
    pub size: u32,
    /// Its alignment in bytes.
    pub align: u32,
}

/// A `.visible .entry` of a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtxEntry<'a> {
    pub name: &'a str,
    /// The text between the parentheses of the declaration.
    params_text: &'a str,
}

impl<'a> PtxEntry<'a> {
    /// The parameters in order; `None` for a declaration this reader does not understand.
    pub fn params(&self) -> impl Iterator<Item = Option<PtxParam<'a>>> + 'a {
        self.params_text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_param)
    }
}

/// Every `.visible .entry` of `ptx`, in file order.
pub fn entries(ptx: &str) -> impl Iterator<Item = PtxEntry<'_>> {
    let mut rest = ptx;
    core::iter::from_fn(move || {
        const MARK: &str = ".visible .entry ";
        let at = rest.find(MARK)?;
        let after = &rest[at + MARK.len()..];
        let open = after.find('(')?;
        let close = after.find(')')?;
        let entry = PtxEntry {
            name: after[..open].trim(),
            params_text: &after[open + 1..close],
        };
        rest = &after[close..];
        Some(entry)
    })
}

/// The entry named `name` of `ptx`.
pub fn entry<'a>(ptx: &'a str, name: &str) -> Option<PtxEntry<'a>> {
    entries(ptx).find(|e| e.name == name)
}

/// The size in bytes of a scalar PTX type.
fn scalar_size(ty: &str) -> Option<u32> {
    Some(match ty {
        ".b8" | ".u8" | ".s8" => 1,
        ".b16" | ".u16" | ".s16" | ".f16" => 2,
        ".b32" | ".u32" | ".s32" | ".f32" => 4,
        ".b64" | ".u64" | ".s64" | ".f64" => 8,
        _ => return None,
    })
}

/// `.param [.align A] .ty name[[N]]`.
fn parse_param(text: &str) -> Option<PtxParam<'_>> {
    let mut words = text.split_whitespace();
    if words.next()? != ".param" {
        return None;
    }
    let mut word = words.next()?;
    let mut align = None;
    if word == ".align" {
        align = Some(words.next()?.parse::<u32>().ok()?);
        word = words.next()?;
    }
    let ty = word;
    let elem = scalar_size(ty)?;
    let declarator = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let (name, count) = match declarator.find('[') {
        Some(open) => {
            let count = declarator[open + 1..].strip_suffix(']')?.parse::<u32>().ok()?;
            (&declarator[..open], count)
        }
        None => (declarator, 1),
    };
    Some(PtxParam {
        name,
        ty,
        size: elem * count,
        align: align.unwrap_or(elem),
    })
}

/// The `.target` of a module.
pub fn target(ptx: &str) -> Option<&str> {
    ptx.lines()
        .find_map(|line| line.trim().strip_prefix(".target "))
        .map(|t| t.split([',', ' ']).next().unwrap_or(t).trim())
}

/// The `.version` (PTX ISA) of a module.
pub fn isa_version(ptx: &str) -> Option<&str> {
    ptx.lines()
        .find_map(|line| line.trim().strip_prefix(".version "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_of_a_declaration() {
        let ptx = ".visible .entry k(\n\t.param .align 8 .b8 k_param_0[16],\n\t.param .u32 k_param_1,\n\t\
                   .param .f32 k_param_2\n)\n{\n}\n.visible .entry j(\n)\n{\n}\n";
        let all: [_; 2] = [entries(ptx).next().unwrap(), entries(ptx).nth(1).unwrap()];
        assert_eq!(all[0].name, "k");
        assert_eq!(all[1].name, "j");
        assert_eq!(all[1].params().count(), 0);
        let mut params = all[0].params();
        assert_eq!(
            params.next(),
            Some(Some(PtxParam {
                name: "k_param_0",
                ty: ".b8",
                size: 16,
                align: 8
            }))
        );
        assert_eq!(
            params.next(),
            Some(Some(PtxParam {
                name: "k_param_1",
                ty: ".u32",
                size: 4,
                align: 4
            }))
        );
        assert_eq!(params.next().unwrap().unwrap().ty, ".f32");
        assert_eq!(params.next(), None);
        assert_eq!(parse_param(".param .q32 x"), None);
    }

    #[test]
    fn module_choice_by_compute_capability() {
        assert_eq!(module_for(7, 5), None);
        assert_eq!(module_for(8, 0).unwrap().arch, "sm_80");
        assert_eq!(module_for(8, 9).unwrap().arch, "sm_80");
        assert_eq!(module_for(9, 0).unwrap().arch, "sm_90");
        assert_eq!(module_for(12, 0).unwrap().arch, "sm_90");
        for m in MODULES {
            assert_eq!(target(m.ptx), Some(m.arch));
        }
    }
}
