//! The output writer (`resca_host::outputs`): destinations checked before a run, temporary
//! files that no planted link can redirect, inputs and special files never replaced,
//! permissions kept, nothing left behind on failure.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use resca_host::outputs::check_destinations;

fn entries(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn refusal(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> String {
    format!("{:#}", check_destinations(outputs, inputs).expect_err("refused"))
}

/// The old writer used `.<name>.<pid>.tmp` and followed links: a user who could write to the
/// folder planted links at those names and had another user's run overwrite the link's target.
/// Now the temporary name is random and created exclusively, so links at every predictable
/// name change nothing.
#[test]
fn links_planted_at_predictable_temporary_names_are_never_followed() {
    let folder = tempfile::tempdir().unwrap();
    let victim = folder.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let out = folder.path().join("out.safetensors");
    let pid = std::process::id();
    for candidate in pid.saturating_sub(50)..pid + 50 {
        let link = folder.path().join(format!(".out.safetensors.{candidate}.tmp"));
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let destination = check_destinations(&[("--out", &out)], &[]).unwrap().remove(0);
    destination.write(|w| w.write_all(b"result")).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "result");
    // Only the planted links, the victim and the output: no temporary file left.
    assert_eq!(entries(folder.path()).len(), 100 + 2);
}

#[test]
fn an_output_that_is_an_input_is_refused_even_through_a_hard_link() {
    let folder = tempfile::tempdir().unwrap();
    let weights = folder.path().join("w.safetensors");
    std::fs::write(&weights, "weights").unwrap();
    let error = refusal(&[("--out", &weights)], &[("--weights", &weights)]);
    assert!(
        error.contains("--out") && error.contains("is the same file as --weights"),
        "{error}"
    );
    let alias = folder.path().join("alias.safetensors");
    std::fs::hard_link(&weights, &alias).unwrap();
    let error = refusal(&[("--png", &alias)], &[("--weights", &weights)]);
    assert!(error.contains("same file as --weights"), "{error}");
    assert_eq!(std::fs::read_to_string(&weights).unwrap(), "weights");
}

#[test]
fn two_outputs_naming_one_file_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("o.bin");
    let same = folder.path().join(".").join("o.bin");
    let error = refusal(&[("--out", &out), ("--png", &same)], &[]);
    assert!(error.contains("--out and --png both name"), "{error}");
}

#[test]
fn special_files_links_and_folders_are_refused_as_destinations() {
    let folder = tempfile::tempdir().unwrap();
    let fifo = folder.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = folder.path().join("link.png");
    std::os::unix::fs::symlink(folder.path().join("target.png"), &link).unwrap();
    for (path, kind) in [
        (Path::new("/dev/null"), "a character device"),
        (fifo.as_path(), "a FIFO"),
        (link.as_path(), "a symbolic link"),
        (folder.path(), "a folder"),
    ] {
        let error = refusal(&[("--out", path)], &[]);
        assert!(error.contains("--out") && error.contains(kind), "{path:?}: {error}");
    }
    let missing = folder.path().join("no/such/folder/out.png");
    let error = refusal(&[("--png", &missing)], &[]);
    assert!(error.contains("does not exist"), "{error}");
    assert!(!folder.path().join("target.png").exists());
}

#[test]
fn an_unwritable_folder_is_refused_before_the_run() {
    // root may write anywhere: the check is then not observable.
    if unsafe { libc::geteuid() } == 0 {
        let error = refusal(&[("--out", Path::new("/proc/version/x"))], &[]);
        assert!(error.contains("is not a folder"), "{error}");
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let error = refusal(&[("--out", &folder.path().join("o.bin"))], &[]);
    assert!(error.contains("cannot write to the folder"), "{error}");
    std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_replaced_output_keeps_its_permissions() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("private.json");
    std::fs::write(&out, "old").unwrap();
    for mode in [0o600, 0o640, 0o755] {
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode)).unwrap();
        let destination = check_destinations(&[("--json", &out)], &[]).unwrap().remove(0);
        destination.write_text("new").unwrap();
        let kept = std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(kept, mode, "{kept:o} instead of {mode:o}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
    }
}

#[test]
fn a_write_that_fails_or_panics_leaves_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("o.bin");
    std::fs::write(&out, "previous").unwrap();
    let destination = check_destinations(&[("--out", &out)], &[]).unwrap().remove(0);
    assert!(destination.write(|_| Err(std::io::Error::other("disk full"))).is_err());
    let panicked = std::panic::catch_unwind(|| {
        destination
            .write(|w| {
                w.write_all(b"half")?;
                panic!("an encoder bug");
            })
            .ok()
    });
    assert!(panicked.is_err());
    assert_eq!(entries(folder.path()), vec!["o.bin".to_string()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous");
}
