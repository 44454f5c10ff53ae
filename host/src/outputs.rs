//! Writing the CLI's output files without ever clobbering anything else.
//!
//! Every destination is checked before a run starts ([`check_destinations`]), so a mistyped
//! folder or a destination that would destroy an input fails in a second, not after hours of
//! sampling:
//! * its folder exists and this process can create files in it (a probe file is created and
//!   removed);
//! * it is a regular file or does not exist yet: a symbolic link, a FIFO, a device, a socket or a
//!   folder is refused by name (`--out /dev/null` as root would otherwise replace the device);
//! * it is not the same file (device and inode) as any input, and no two outputs name the same
//!   file.
//!
//! Writing ([`Destination::write`]) goes to a fresh temporary file in the destination's folder,
//! created exclusively under a random name (`.resca-XXXXXX.tmp`, never through a symbolic link
//! planted at a predictable name), then renamed over the destination once complete and synced.
//! An existing destination keeps its permission bits (a file of mode 600 stays 600; its owner
//! becomes the writing user, as with any replacing rename). The temporary file is removed on an
//! error, on a panic (when the temporary file's guard is dropped) and on SIGINT, SIGTERM or SIGHUP
//! ([`remove_temporaries_on_signals`]); only SIGKILL or a power cut can leave one behind.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use resca_reference::safetensors_file::file_kind;

/// Prefix and suffix of the temporary files (hidden, recognisable).
const TEMPORARY_PREFIX: &str = ".resca-";
const TEMPORARY_SUFFIX: &str = ".tmp";

/// Environment variable holding a pause in milliseconds between writing an output's temporary
/// file and renaming it into place: lets tests interrupt a run while a temporary file exists.
pub const WRITE_PAUSE_ENV: &str = "RESCA_TEST_WRITE_PAUSE_MS";

/// An output file, checked before the run.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The flag that named it (`--out`), for messages.
    pub flag: String,
    pub path: PathBuf,
    folder: PathBuf,
    /// Permission bits of the file it replaces, if one exists.
    existing_mode: Option<u32>,
}

/// Device and inode of a file.
type FileId = (u64, u64);

fn file_id(metadata: &std::fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

/// Where an output lands: its folder's (device, inode) and its name, and the file's own
/// (device, inode) when it exists (so hard links and aliases through linked folders match).
struct OutputIdentity {
    flag: String,
    folder: FileId,
    name: std::ffi::OsString,
    file: Option<FileId>,
}

impl OutputIdentity {
    fn same_file(&self, other: &Self) -> bool {
        (self.folder, &self.name) == (other.folder, &other.name) || (self.file.is_some() && self.file == other.file)
    }
}

/// Checks every output (flag, path) before a run: see the module documentation. `inputs` are
/// the (flag, path) of every file the command reads; one that does not exist is skipped (its
/// own loading reports it).
pub fn check_destinations(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<Vec<Destination>> {
    let input_ids: Vec<(&str, &Path, FileId)> = inputs
        .iter()
        .filter_map(|&(flag, path)| std::fs::metadata(path).ok().map(|m| (flag, path, file_id(&m))))
        .collect();
    let mut seen: Vec<OutputIdentity> = Vec::new();
    let mut destinations = Vec::new();
    for &(flag, path) in outputs {
        let destination = check_destination(flag, path)?;
        let existing = std::fs::symlink_metadata(path).ok().map(|m| file_id(&m));
        if let Some(id) = existing
            && let Some((input_flag, input_path, _)) = input_ids.iter().find(|(_, _, input)| *input == id)
        {
            bail!(
                "{flag} {} is the same file as {input_flag} {}: an output never replaces an input; choose another name",
                path.display(),
                input_path.display()
            );
        }
        let folder = file_id(
            &std::fs::metadata(&destination.folder)
                .with_context(|| format!("{flag} {}: cannot read its folder", path.display()))?,
        );
        let identity = OutputIdentity {
            flag: flag.to_string(),
            folder,
            name: path.file_name().expect("checked by check_destination").to_os_string(),
            file: existing,
        };
        if let Some(other) = seen.iter().find(|other| other.same_file(&identity)) {
            bail!(
                "{} and {flag} both name {}: each output needs its own file",
                other.flag,
                path.display()
            );
        }
        seen.push(identity);
        destinations.push(destination);
    }
    Ok(destinations)
}

/// The checks of one destination on its own: a file name, an existing folder this process can
/// create files in, and a regular file or nothing at the path.
fn check_destination(flag: &str, path: &Path) -> Result<Destination> {
    let shown = path.display();
    let Some(name) = path.file_name() else {
        bail!("{flag} {shown} names a folder; give a file name");
    };
    if name.to_string_lossy().ends_with('/') {
        bail!("{flag} {shown} names a folder; give a file name");
    }
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{flag} {shown}: {} is not a folder", folder.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{flag} {shown}: the folder {} does not exist", folder.display())
        }
        Err(e) => bail!("{flag} {shown}: cannot read the folder {}: {e}", folder.display()),
    }
    let existing_mode = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            check_replaceable(flag, path, &folder, &m)?;
            Some(m.permissions().mode() & 0o7777)
        }
        Ok(m) => bail!(
            "{flag} {shown} is {}: outputs are written only to regular files (leave the flag out to write nothing)",
            file_kind(m.file_type())
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("{flag} {shown}: cannot read it: {e}"),
    };
    // The one reliable test of "can create files here" (permissions, ACLs, read-only mounts).
    tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .suffix(TEMPORARY_SUFFIX)
        .tempfile_in(&folder)
        .with_context(|| format!("{flag} {shown}: cannot write to the folder {}", folder.display()))?;
    Ok(Destination {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        folder,
        existing_mode,
    })
}

/// In a sticky folder (/tmp) only a file's owner (or the folder's) may replace it: say so now
/// rather than when the rename fails at the end of the run.
fn check_replaceable(flag: &str, path: &Path, folder: &Path, file: &std::fs::Metadata) -> Result<()> {
    let Ok(folder_meta) = std::fs::metadata(folder) else {
        return Ok(());
    };
    const STICKY: u32 = 0o1000;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if folder_meta.mode() & STICKY != 0 && me != 0 && file.uid() != me && folder_meta.uid() != me {
        bail!(
            "{flag} {}: the file belongs to another user in a sticky folder ({}), so it cannot be replaced",
            path.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Paths of the temporary files being written now, removed by the signal thread.
static LIVE_TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE_TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Destination {
    /// Writes the output: `contents` fills a fresh temporary file in the destination's folder,
    /// which then replaces the destination (see the module documentation). Nothing is left
    /// behind on any error.
    pub fn write(&self, contents: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
        let shown = self.path.display();
        let failed = |what: &str| format!("{} {shown}: cannot write {what}", self.flag);
        // The destination may have changed during the run: it is still never followed through.
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && !m.file_type().is_file()
        {
            bail!(
                "{} {shown} has become {} during the run: outputs are written only to regular files",
                self.flag,
                file_kind(m.file_type())
            );
        }
        let mode = self.existing_mode.unwrap_or(0o666);
        let mut temporary = {
            // Registered before the signal thread can look: it waits for this lock.
            let mut live = live_temporaries();
            let temporary = tempfile::Builder::new()
                .prefix(TEMPORARY_PREFIX)
                .suffix(TEMPORARY_SUFFIX)
                .permissions(std::fs::Permissions::from_mode(mode))
                .tempfile_in(&self.folder)
                .with_context(|| failed(&format!("a temporary file in {}", self.folder.display())))?;
            live.push(temporary.path().to_path_buf());
            temporary
        };
        let temporary_path = temporary.path().to_path_buf();
        let unregister = || live_temporaries().retain(|p| *p != temporary_path);
        let written = (|| -> std::io::Result<()> {
            let mut writer = std::io::BufWriter::new(temporary.as_file_mut());
            contents(&mut writer)?;
            writer.flush()?;
            drop(writer);
            if let Some(mode) = self.existing_mode {
                // The umask may have narrowed the mode the file was created with.
                temporary
                    .as_file()
                    .set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            temporary.as_file().sync_all()
        })();
        if let Err(e) = written {
            unregister();
            // Dropping `temporary` removes the file.
            return Err(anyhow::Error::new(e).context(failed("the file")));
        }
        if let Some(ms) = std::env::var(WRITE_PAUSE_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut live = live_temporaries();
        let persisted = temporary.persist(&self.path);
        live.retain(|p| *p != temporary_path);
        drop(live);
        persisted.map_err(|e| anyhow::Error::new(e.error).context(failed("the file (renaming it into place)")))?;
        Ok(())
    }

    /// Writes `text` (a JSON or markdown table).
    pub fn write_text(&self, text: &str) -> Result<()> {
        self.write(|w| w.write_all(text.as_bytes()))
    }
}

/// The pipe's write end through which the signal handler hands a signal to the cleanup thread.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The signal handler: only writes the signal's number to the pipe (`write` is
/// async-signal-safe; locking or removing files here is not).
extern "C" fn hand_over_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: writes one byte from a local to a pipe opened before the handler was installed.
    unsafe {
        libc::write(fd, (&byte as *const u8).cast(), 1);
    }
}

/// Removes the temporary output files of a run interrupted by SIGINT, SIGTERM or SIGHUP, then
/// ends the process by the same signal (so a shell sees the usual status). The handler, which
/// runs on whichever thread the signal reaches (threads the BLAS library starts before `main`
/// included), hands the signal through a pipe to a thread made for it, which may lock and
/// remove files. A signal ignored when the program starts (`nohup`, a background job's SIGINT)
/// stays ignored. Call it first thing in `main`.
pub fn remove_temporaries_on_signals() {
    let mut fds = [0; 2];
    // SAFETY: creates a pipe into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [read_end, write_end] = fds;
    SIGNAL_PIPE.store(write_end, std::sync::atomic::Ordering::Relaxed);
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local from the pipe's read end, which stays open.
            let read = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
            if read != 1 {
                continue;
            }
            for path in live_temporaries().drain(..) {
                let _ = std::fs::remove_file(path);
            }
            let signal = libc::c_int::from(byte);
            // SAFETY: restores the default action and re-raises: the process ends by the
            // signal, as it would have without the handler.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::raise(signal);
            }
            std::process::exit(128 + signal);
        }
    });
    if spawned.is_err() {
        return;
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: reads the current action, then installs the handler above (which only
        // writes to a pipe) unless the signal is ignored.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current);
            if current.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = hand_over_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Standard output could not be written (closed early, as by `| head`, or full).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

impl StdoutError {
    /// The reader went away (`resca plan --json | true`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Prints `text` and a newline on standard output, returning [`StdoutError`] instead of
/// panicking as `println!` does when standard output is closed or full.
pub fn print_line(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(StdoutError)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_file_is_registered_only_while_it_is_written() {
        let folder = tempfile::tempdir().unwrap();
        let out = folder.path().join("a.txt");
        let [destination] = &check_destinations(&[("--out", &out)], &[]).unwrap()[..] else {
            panic!("one destination");
        };
        destination
            .write(|w| {
                let live = live_temporaries().clone();
                assert!(
                    live.iter().any(|p| p.starts_with(folder.path())),
                    "registered while written: {live:?}"
                );
                w.write_all(b"hello")
            })
            .unwrap();
        assert!(!live_temporaries().iter().any(|p| p.starts_with(folder.path())));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello");
    }

    #[test]
    fn a_failed_write_leaves_neither_the_temporary_nor_the_destination() {
        let folder = tempfile::tempdir().unwrap();
        let out = folder.path().join("b.bin");
        let destination = check_destinations(&[("--out", &out)], &[]).unwrap().remove(0);
        let error = destination
            .write(|w| {
                w.write_all(b"partial")?;
                Err(std::io::Error::other("the encoder failed"))
            })
            .unwrap_err();
        assert!(format!("{error:#}").contains("the encoder failed"), "{error:#}");
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 0);
    }
}
