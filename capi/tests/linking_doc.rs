//! docs/linking.md's kernel reference is what the kernel table and the interface's launch rules
//! generate now (`resca::reference::kernel_reference`): a kernel, parameter or rule changed
//! without the document fails here. `RESCA_BLESS=1` rewrites the generated part.

use std::path::Path;

use resca::reference::{BEGIN, END, kernel_reference};

#[test]
fn the_kernel_reference_of_docs_linking_md_is_generated_from_the_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/linking.md");
    let document = std::fs::read_to_string(&path).expect("docs/linking.md");
    let (Some(start), Some(end)) = (document.find(BEGIN), document.find(END)) else {
        panic!("docs/linking.md lacks the generated kernel reference's markers");
    };
    let committed = &document[start..end + END.len() + 1];
    let generated = kernel_reference();
    if committed != generated && std::env::var_os("RESCA_BLESS").is_some_and(|v| v == "1") {
        let updated = format!("{}{generated}{}", &document[..start], &document[end + END.len() + 1..]);
        std::fs::write(&path, updated).expect("writing docs/linking.md");
        return;
    }
    assert!(
        committed == generated,
        "docs/linking.md's kernel reference differs from the kernel table; run \
         `RESCA_BLESS=1 cargo test -p resca-capi --test linking_doc` and commit the document"
    );
    // Every kernel of the table has its section, with its parameters.
    for kernel in resca_host::pipeline::Kernel::ALL {
        assert!(
            generated.contains(&format!("### `{}`", kernel.name())),
            "{}",
            kernel.name()
        );
    }
    assert!(generated.contains("| 0 | `a` | `Global<f32>` (read) | 16 | `RESCA_ARG_BUFFER_F32` |"));
}
