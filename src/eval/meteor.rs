//! METEOR 1.5, computed by the Java implementation exactly as pycocoevalcap's
//! `Meteor()` drives it. There is no native approximation: when Java or the
//! jar is missing, METEOR is reported as unavailable, with a reason.
//!
//! # Protocol
//!
//! The jar runs as `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`
//! (from the jar's directory). For every item, in order, we send
//! `SCORE ||| ref1 ||| … ||| refN ||| hypothesis` and read back one line of
//! sufficient statistics; the hypothesis first has `|||` removed and each
//! `"  "` replaced with `" "` (Python's `str.replace`, left to right), the
//! references are sent as they are. Then
//! `EVAL ||| stats1 ||| … ||| statsM` returns one score per item followed by
//! the corpus score (METEOR's own aggregate over the statistics, **not** the
//! mean of the item scores).
//!
//! One deviation, which only matters for pretokenized input: a caption
//! containing `\n` or `\r` would break the line protocol (pycocoevalcap's
//! tokenizer never produces them), so they are sent as spaces.
//!
//! # Finding the jar
//!
//! 1. an explicit path ([`MeteorConfig::jar`], e.g. `--meteor-jar`);
//! 2. the `BLIP2IDC_METEOR_JAR` environment variable;
//! 3. the pip-installed pycocoevalcap (`python3 -c 'import pycocoevalcap'`),
//!    which ships `meteor/meteor-1.5.jar` and its paraphrase table.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{anyhow, bail, Context};

/// Environment variable naming the METEOR jar.
pub const JAR_ENV: &str = "BLIP2IDC_METEOR_JAR";

/// How to run METEOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteorConfig {
    /// Compute METEOR at all.
    pub enabled: bool,
    /// Path to `meteor-1.5.jar`; `None` searches as described in the module
    /// documentation.
    pub jar: Option<PathBuf>,
    /// The `java` executable.
    pub java: PathBuf,
    /// Fail instead of reporting METEOR as unavailable.
    pub required: bool,
}

impl Default for MeteorConfig {
    fn default() -> Self {
        MeteorConfig { enabled: true, jar: None, java: PathBuf::from("java"), required: false }
    }
}

impl MeteorConfig {
    /// METEOR switched off.
    pub fn disabled() -> Self {
        MeteorConfig { enabled: false, ..MeteorConfig::default() }
    }
}

/// METEOR for a corpus and each of its items.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteorScores {
    /// METEOR's aggregate score over all items.
    pub corpus: f64,
    /// Per-item scores, in input order.
    pub per_item: Vec<f64>,
}

/// Finds the METEOR jar; the error is a one-line reason.
pub fn locate_jar(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("METEOR jar {} not found", path.display()))
        };
    }
    if let Some(path) = std::env::var_os(JAR_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("METEOR jar {} (from {JAR_ENV}) not found", path.display()))
        };
    }
    let script = "import os, pycocoevalcap; \
                  print(os.path.join(list(pycocoevalcap.__path__)[0], 'meteor', 'meteor-1.5.jar'))";
    let out = Command::new("python3").args(["-c", script]).stdin(Stdio::null()).stderr(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("METEOR jar not found in the pycocoevalcap install ({})", path.display()))
            }
        }
        _ => Err(format!("METEOR jar not found (give --meteor-jar or set {JAR_ENV}, or pip install pycocoevalcap)")),
    }
}

/// A running METEOR process.
pub struct Meteor {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// `hypothesis.replace('|||', '').replace('  ', ' ')`.
fn clean_hypothesis(hypothesis: &str) -> String {
    hypothesis.replace("|||", "").replace("  ", " ")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The `SCORE` line pycocoevalcap sends for one item.
pub fn score_line<R: AsRef<str>>(hypothesis: &str, references: &[R]) -> String {
    let refs: Vec<String> = references.iter().map(|r| one_line(r.as_ref())).collect();
    format!("SCORE ||| {} ||| {}\n", refs.join(" ||| "), one_line(&clean_hypothesis(hypothesis)))
}

impl Meteor {
    /// Starts the jar. The error is a one-line reason (Java missing, jar
    /// missing, …).
    pub fn start(config: &MeteorConfig) -> Result<Meteor, String> {
        let jar = locate_jar(config.jar.as_deref())?;
        let jar = jar.canonicalize().unwrap_or(jar);
        let dir = jar.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let mut child = Command::new(&config.java)
            .arg("-jar")
            .arg("-Xmx2G")
            .arg(&jar)
            .args(["-", "-", "-stdio", "-l", "en", "-norm"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("java not found ({}); METEOR needs a Java runtime", config.java.display())
                } else {
                    format!("cannot start {}: {e}", config.java.display())
                }
            })?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Meteor { child, stdin, stdout, stderr: Some(stderr) })
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).context("reading from METEOR")?;
        if n == 0 {
            bail!("METEOR exited unexpectedly{}", self.stderr_tail());
        }
        Ok(line.trim().to_string())
    }

    /// Last line of the process's stderr, after it has exited.
    fn stderr_tail(&mut self) -> String {
        let _ = self.child.wait();
        let text = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        match text.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(l) => format!(": {}", l.trim()),
            None => String::new(),
        }
    }

    /// Sufficient statistics (`SCORE` replies) for every item, in order.
    /// Lines are written by a helper thread while replies are read, so large
    /// sets do not deadlock on full pipes.
    pub fn statistics<C: AsRef<str> + Sync, R: AsRef<str> + Sync>(
        &mut self,
        candidates: &[C],
        references: &[Vec<R>],
    ) -> anyhow::Result<Vec<String>> {
        assert_eq!(candidates.len(), references.len(), "one reference list per candidate");
        let mut stdin = self.stdin.take().context("METEOR stdin closed")?;
        let (stdin, stats) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> std::io::Result<ChildStdin> {
                let mut w = std::io::BufWriter::new(&mut stdin);
                for (c, refs) in candidates.iter().zip(references) {
                    w.write_all(score_line(c.as_ref(), refs).as_bytes())?;
                }
                w.flush()?;
                drop(w);
                Ok(stdin)
            });
            let mut stats = Vec::with_capacity(candidates.len());
            let mut result = Ok(());
            for _ in 0..candidates.len() {
                match self.read_line() {
                    Ok(line) => stats.push(line),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let stdin = writer.join().map_err(|_| anyhow!("METEOR writer thread panicked"));
            (stdin, result.map(|()| stats))
        });
        let stats = stats?;
        self.stdin = Some(stdin?.context("writing to METEOR")?);
        Ok(stats)
    }

    /// Sends `EVAL ||| s1 ||| … ||| sM`; returns the per-item scores and
    /// METEOR's corpus score. `stats` must not be empty.
    pub fn eval(&mut self, stats: &[String]) -> anyhow::Result<MeteorScores> {
        if stats.is_empty() {
            bail!("METEOR: nothing to evaluate");
        }
        let mut line = String::from("EVAL");
        for s in stats {
            line.push_str(" ||| ");
            line.push_str(s);
        }
        line.push('\n');
        let stdin = self.stdin.as_mut().context("METEOR stdin closed")?;
        stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush()).context("writing to METEOR")?;
        let parse = |s: String| -> anyhow::Result<f64> {
            s.parse::<f64>().with_context(|| format!("METEOR returned {s:?}, not a number"))
        };
        let mut per_item = Vec::with_capacity(stats.len());
        for _ in 0..stats.len() {
            let l = self.read_line()?;
            per_item.push(parse(l)?);
        }
        let l = self.read_line()?;
        let corpus = parse(l)?;
        Ok(MeteorScores { corpus, per_item })
    }
}

impl Drop for Meteor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs METEOR on tokenized captions: `Ok(Err(reason))` when METEOR is
/// unavailable (Java or jar missing), `Err` when it started but failed.
pub fn score<C: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    candidates: &[C],
    references: &[Vec<R>],
    config: &MeteorConfig,
) -> anyhow::Result<Result<MeteorScores, String>> {
    let mut meteor = match Meteor::start(config) {
        Ok(m) => m,
        Err(reason) => return Ok(Err(reason)),
    };
    let stats = meteor.statistics(candidates, references)?;
    Ok(Ok(meteor.eval(&stats)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_line_preprocessing() {
        assert_eq!(score_line("a ||| b   c", &["r 1", "r  2"]), "SCORE ||| r 1 ||| r  2 ||| a b  c\n");
        assert_eq!(score_line("x\ny", &["z"]), "SCORE ||| z ||| x y\n");
    }

    #[test]
    fn missing_java_or_jar_is_a_reason_not_an_error() {
        let cfg = MeteorConfig { jar: Some(PathBuf::from("/nonexistent/meteor-1.5.jar")), ..MeteorConfig::default() };
        let reason = score(&["a"], &[vec!["a"]], &cfg).expect("no hard error").expect_err("unavailable");
        assert!(reason.contains("not found"), "{reason}");
        assert!(!reason.contains('\n'));

        let jar = std::env::current_exe().expect("exe"); // any existing file
        let cfg = MeteorConfig { jar: Some(jar), java: PathBuf::from("/nonexistent/java"), ..MeteorConfig::default() };
        let reason = score(&["a"], &[vec!["a"]], &cfg).expect("no hard error").expect_err("unavailable");
        assert!(reason.starts_with("java not found"), "{reason}");
    }
}
