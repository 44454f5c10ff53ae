//! Running the judge's tests: once per test to trace which mutants it reaches, then once per
//! mutant with only those tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use wait_timeout::ChildExt;

use crate::SchemaEntry;

/// One judge test and the mutants it reaches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracedTest {
    pub binary: PathBuf,
    /// Where the test runs: its package's directory.
    pub dir: PathBuf,
    pub name: String,
    /// Its time with every mutant off, traced.
    pub seconds: f64,
    pub reached: Vec<usize>,
}

/// The verdict on one mutant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub id: usize,
    pub name: String,
    /// `caught` (a test failed), `timeout` (a test ran past its limit: caught too),
    /// `missed` (every test that reaches it passed) or `unreached` (no test reaches it).
    pub outcome: String,
    pub test: Option<String>,
    pub seconds: f64,
}

/// Each test process may use this much address space: a mutant that computes a huge size
/// fails its test instead of taking the machine's memory.
const ADDRESS_SPACE_LIMIT: libc::rlim_t = 16 << 30;

fn test_command(binary: &Path, dir: &Path, name: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .current_dir(dir)
        .args(["--exact", name, "--test-threads", "1", "-q"])
        .env("RAYON_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_LIMIT,
                rlim_max: ADDRESS_SPACE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// How a test run ended.
enum Ended {
    Passed,
    Failed,
    TimedOut,
}

fn run_test(mut command: Command, limit: Duration) -> anyhow::Result<Ended> {
    let mut child = command.spawn().context("starting a judge test")?;
    match child.wait_timeout(limit)? {
        Some(status) if status.success() => Ok(Ended::Passed),
        Some(_) => Ok(Ended::Failed),
        None => {
            child.kill()?;
            child.wait()?;
            Ok(Ended::TimedOut)
        }
    }
}

/// The tests a libtest binary runs by default (not the ignored ones).
fn list_tests(binary: &Path) -> anyhow::Result<Vec<String>> {
    let list = |ignored: bool| -> anyhow::Result<Vec<String>> {
        let mut command = Command::new(binary);
        command.args(["--list", "--format", "terse"]);
        if ignored {
            command.arg("--ignored");
        }
        let output = command
            .output()
            .with_context(|| format!("listing the tests of {}", binary.display()))?;
        if !output.status.success() {
            bail!("{} --list failed", binary.display());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect())
    };
    let ignored: HashSet<String> = list(true)?.into_iter().collect();
    Ok(list(false)?.into_iter().filter(|t| !ignored.contains(t)).collect())
}

/// Runs `work` over `items` on `jobs` threads.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    jobs: usize,
    work: impl Fn(T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let queue = Mutex::new(items.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let Some(item) = queue.lock().unwrap().next() else {
                            return Ok(());
                        };
                        let result = work(item)?;
                        results.lock().unwrap().push(result);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a judge thread panicked"))
    })?;
    Ok(results.into_inner().unwrap())
}

pub fn trace(schemata: &[SchemaEntry], binaries: &[String], out: &Path, jobs: usize) -> anyhow::Result<()> {
    let traces = out.with_extension("traces");
    std::fs::create_dir_all(&traces)?;
    let mut tests = Vec::new();
    for spec in binaries {
        let Some((binary, dir)) = spec.rsplit_once('=') else {
            bail!("--binary {spec}: expected PATH=DIR");
        };
        let binary = std::fs::canonicalize(binary).with_context(|| format!("{binary} is not a file"))?;
        let dir = std::fs::canonicalize(dir).with_context(|| format!("{dir} is not a directory"))?;
        tests.extend(
            list_tests(&binary)?
                .into_iter()
                .map(|name| (binary.clone(), dir.clone(), name)),
        );
    }
    eprintln!("tracing {} tests", tests.len());
    let count = tests.len();
    let done = Mutex::new(0usize);
    let mut traced = in_parallel(
        tests.into_iter().enumerate().collect(),
        jobs,
        |(index, (binary, dir, name))| {
            let file = traces.join(format!("{index}.ids"));
            let _ = std::fs::remove_file(&file);
            let mut command = test_command(&binary, &dir, &name);
            command.env("RESCA_MUTANT", "trace").env("RESCA_MUTANT_TRACE", &file);
            let start = Instant::now();
            let ended = run_test(command, Duration::from_secs(1800))?;
            let seconds = start.elapsed().as_secs_f64();
            if !matches!(ended, Ended::Passed) {
                bail!("{name} fails with every mutant off: the judge must pass on the unmutated code");
            }
            let reached: Vec<usize> = std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .map(|l| l.parse().context("trace line"))
                .collect::<anyhow::Result<_>>()?;
            let mut done = done.lock().unwrap();
            *done += 1;
            eprintln!(
                "[{done}/{count}] {name}: {seconds:.1} s, {} mutants reached",
                reached.len()
            );
            Ok(TracedTest {
                binary,
                dir,
                name,
                seconds,
                reached,
            })
        },
    )?;
    traced.sort_by(|a, b| a.name.cmp(&b.name));
    let reached: HashSet<usize> = traced.iter().flat_map(|t| t.reached.iter().copied()).collect();
    let rewritten = schemata.iter().filter(|e| e.not_rewritten.is_none()).count();
    eprintln!(
        "{} of {rewritten} rewritten mutants are reached by some test",
        reached.len()
    );
    std::fs::write(out, serde_json::to_string_pretty(&traced)?)?;
    Ok(())
}

/// Outcomes already recorded in `out` (one JSON object per line).
fn read_outcomes(out: &Path) -> anyhow::Result<Vec<Outcome>> {
    let Ok(text) = std::fs::read_to_string(out) else {
        return Ok(Vec::new());
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", out.display())))
        .collect()
}

pub fn run(
    schemata: &[SchemaEntry],
    coverage: &Path,
    out: &Path,
    jobs: usize,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let traced: Vec<TracedTest> = serde_json::from_str(&std::fs::read_to_string(coverage)?)
        .with_context(|| format!("{} is not a trace", coverage.display()))?;
    let mut reaching: HashMap<usize, Vec<&TracedTest>> = HashMap::new();
    for test in &traced {
        for id in &test.reached {
            reaching.entry(*id).or_default().push(test);
        }
    }
    for tests in reaching.values_mut() {
        // Quickest first: a caught mutant is usually caught by the first test that reaches it.
        tests.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    }
    let judged: HashSet<usize> = read_outcomes(out)?.iter().map(|o| o.id).collect();
    let todo: Vec<&SchemaEntry> = schemata
        .iter()
        .filter(|e| e.not_rewritten.is_none() && !judged.contains(&e.id))
        .filter(|e| only.is_none_or(|o| e.name.contains(o)))
        .collect();
    let count = todo.len();
    eprintln!("judging {count} mutants ({} judged before)", judged.len());
    let file = Mutex::new(OpenOptions::new().create(true).append(true).open(out)?);
    let done = Mutex::new(0usize);
    in_parallel(todo, jobs, |entry| {
        let start = Instant::now();
        let mut outcome = Outcome {
            id: entry.id,
            name: entry.name.clone(),
            outcome: "missed".into(),
            test: None,
            seconds: 0.0,
        };
        match reaching.get(&entry.id) {
            None => outcome.outcome = "unreached".into(),
            Some(tests) => {
                for test in tests {
                    let mut command = test_command(&test.binary, &test.dir, &test.name);
                    command.env("RESCA_MUTANT", entry.id.to_string());
                    // Three times the traced time and half a minute: the machine may be busier
                    // now than when it was traced.
                    let limit = Duration::from_secs_f64(test.seconds * 3.0 + 30.0);
                    let verdict = match run_test(command, limit)? {
                        Ended::Passed => continue,
                        Ended::Failed => "caught",
                        Ended::TimedOut => "timeout",
                    };
                    outcome.outcome = verdict.into();
                    outcome.test = Some(test.name.clone());
                    break;
                }
            }
        }
        outcome.seconds = start.elapsed().as_secs_f64();
        let mut file = file.lock().unwrap();
        writeln!(file, "{}", serde_json::to_string(&outcome)?)?;
        file.flush()?;
        let mut done = done.lock().unwrap();
        *done += 1;
        eprintln!(
            "[{done}/{count}] {} {:.0} s: {}",
            outcome.outcome, outcome.seconds, outcome.name
        );
        Ok(())
    })?;
    Ok(())
}

pub fn report(schemata: &[SchemaEntry], outcomes: &Path) -> anyhow::Result<()> {
    let outcomes: HashMap<usize, Outcome> = read_outcomes(outcomes)?.into_iter().map(|o| (o.id, o)).collect();
    #[derive(Default)]
    struct Counts {
        listed: usize,
        caught: usize,
        timeout: usize,
        missed: usize,
        unreached: usize,
        /// The schema does not compile: neither would the mutant.
        unviable: usize,
        /// Left for cargo-mutants (a const context, a kind without a schema).
        no_schema: usize,
        not_run: usize,
    }
    let mut per_file: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut survivors = Vec::new();
    for entry in schemata {
        let counts = per_file.entry(&entry.file).or_default();
        counts.listed += 1;
        match &entry.not_rewritten {
            Some(why) if why.starts_with(crate::UNVIABLE) => {
                counts.unviable += 1;
                continue;
            }
            Some(_) => {
                counts.no_schema += 1;
                continue;
            }
            None => {}
        }
        match outcomes.get(&entry.id).map(|o| o.outcome.as_str()) {
            Some("caught") => counts.caught += 1,
            Some("timeout") => counts.timeout += 1,
            Some("missed") => {
                counts.missed += 1;
                survivors.push(format!("missed    {}", entry.name));
            }
            Some("unreached") => {
                counts.unreached += 1;
                survivors.push(format!("unreached {}", entry.name));
            }
            _ => counts.not_run += 1,
        }
    }
    println!("| file | mutants | caught | timeout | missed | unreached | unviable | no schema | not run | score |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut total = Counts::default();
    let row = |name: &str, c: &Counts| {
        let judged = c.caught + c.timeout + c.missed + c.unreached;
        let score = if judged == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * (c.caught + c.timeout) as f64 / judged as f64)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {score} |",
            c.listed, c.caught, c.timeout, c.missed, c.unreached, c.unviable, c.no_schema, c.not_run
        );
    };
    for (file, c) in &per_file {
        row(file, c);
        total.listed += c.listed;
        total.caught += c.caught;
        total.timeout += c.timeout;
        total.missed += c.missed;
        total.unreached += c.unreached;
        total.unviable += c.unviable;
        total.no_schema += c.no_schema;
        total.not_run += c.not_run;
    }
    row("**all**", &total);
    println!();
    for s in survivors {
        println!("{s}");
    }
    Ok(())
}
