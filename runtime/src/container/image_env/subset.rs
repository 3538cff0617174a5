//! Environment scripts for an image without `/bin/sh` (distroless and
//! static-binary images from Docker): a small interpreter for the subset
//! of shell Apptainer itself generates, run in the same unprivileged child
//! that would otherwise have executed the image's shell.
//!
//! Understood: blank lines and comments; `export NAME=WORD`, `NAME=WORD`,
//! `export NAME...`; words made of plain characters, `'single'` and
//! `"double"` quotes, backslash escapes, and expansions `$NAME`, `${NAME}`,
//! `${NAME:-WORD}`, `${NAME-WORD}`, `${NAME:+WORD}`, `${NAME+WORD}` (nested
//! quotes inside them too). That covers what Apptainer writes for Docker
//! `ENV` lines (`10-docker2singularity.sh`). Apptainer's own `99-base.sh`
//! and `99-runtimevars.sh` use conditionals; their effect is known and
//! applied instead (LD_LIBRARY_PATH ends with `/.singularity.d/libs`, a
//! prompt; the PATH edits are sifrun's own, applied later). Anything else
//! (a `%environment` with `if`, command substitution, functions) is
//! refused in one line naming the file and line: guessing would give a
//! wrong environment silently.

use std::collections::BTreeMap;

/// The variables, in the order they were first set, and which are exported.
#[derive(Debug, Default, Clone)]
pub struct Vars {
    values: BTreeMap<String, String>,
    order: Vec<String>,
    exported: Vec<String>,
}

impl Vars {
    /// Starts from exported variables (the evaluation's clean environment).
    pub fn new(initial: &[(String, String)]) -> Self {
        let mut vars = Vars::default();
        for (name, value) in initial {
            vars.set(name, value.clone());
            vars.export(name);
        }
        vars
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn set(&mut self, name: &str, value: String) {
        if !self.values.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.values.insert(name.to_string(), value);
    }

    fn export(&mut self, name: &str) {
        if !self.exported.iter().any(|n| n == name) {
            self.exported.push(name.to_string());
        }
    }

    /// Exported variables that have a value, in order.
    pub fn exported(&self) -> Vec<(String, String)> {
        self.order
            .iter()
            .filter(|n| self.exported.contains(n))
            .filter_map(|n| self.values.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }
}

/// Sources every `*.sh` in `dir` in name order, from `base`, with
/// Apptainer's PATH completion after the Docker file; returns the exported
/// variables, or why a script needs a shell (file and line).
pub fn evaluate_dir(
    dir: &std::path::Path,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{} cannot be read: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sh"))
        .collect();
    names.sort();
    let mut vars = Vars::new(base);
    for name in names {
        let path = dir.join(&name);
        // As the shell would: a script too large to be an environment is
        // not one.
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= 1 << 20 => std::fs::read_to_string(&path)
                .map_err(|e| format!("{} cannot be read: {e}", path.display()))?,
            Ok(m) if m.is_file() => return Err(format!("{} is larger than 1 MiB", path.display())),
            _ => continue,
        };
        source(&mut vars, &name, &text).map_err(|why| {
            format!(
                "its environment script {} needs one ({why})",
                path.display()
            )
        })?;
        if name == "10-docker2singularity.sh" || name == "10-docker.sh" {
            vars.complete_path();
        }
    }
    Ok(vars.exported())
}

/// Applies one script (its file name decides the known special cases).
pub fn source(vars: &mut Vars, file_name: &str, text: &str) -> Result<(), String> {
    // On a copy: a script is applied whole or, when it needs a shell,
    // not at all.
    let mut sourced = vars.clone();
    let why = match run_lines(&mut sourced, text) {
        Ok(()) => {
            *vars = sourced;
            return Ok(());
        }
        Err(why) => why,
    };
    match file_name {
        "99-base.sh" => {
            let ld = match vars.get("LD_LIBRARY_PATH") {
                Some(v) if !v.is_empty() => format!("{v}:/.singularity.d/libs"),
                _ => "/.singularity.d/libs".to_string(),
            };
            vars.set("LD_LIBRARY_PATH", ld);
            vars.export("LD_LIBRARY_PATH");
            if vars.get("PS1").is_none_or(str::is_empty) {
                vars.set("PS1", "Apptainer> ".into());
            }
            vars.export("PS1");
            Ok(())
        }
        "99-runtimevars.sh" | "94-appsbase.sh" | "95-apps.sh" => Ok(()),
        _ => Err(why),
    }
}

impl Vars {
    /// Apptainer's `fixpath`: the default PATH entries PATH lacks, appended.
    fn complete_path(&mut self) {
        let mut path = self.get("PATH").unwrap_or_default().to_string();
        for dir in crate::container::env::DEFAULT_PATH.split(':') {
            if !path.split(':').any(|p| p == dir) {
                if !path.is_empty() {
                    path.push(':');
                }
                path.push_str(dir);
            }
        }
        self.set("PATH", path);
        self.export("PATH");
    }
}

fn run_lines(vars: &mut Vars, text: &str) -> Result<(), String> {
    for (n, line) in logical_lines(text).into_iter().enumerate() {
        run_line(vars, &line).map_err(|why| format!("line {}: {why}", n + 1))?;
    }
    Ok(())
}

/// Lines, with a quoted newline kept inside its line.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if c == '\n' && !single && !double {
            lines.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    lines.push(current);
    lines
}

fn run_line(vars: &mut Vars, line: &str) -> Result<(), String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(());
    }
    let (export, rest) = match line.strip_prefix("export ") {
        Some(rest) => (true, rest.trim_start()),
        None => (false, line),
    };
    let mut rest = rest;
    let mut any = false;
    while !rest.is_empty() {
        let name_len = super::name_len(rest);
        let name = &rest[..name_len];
        if !crate::container::env::is_valid_name(name) {
            return Err(format!("not understood without a shell: {line}"));
        }
        rest = &rest[name_len..];
        if let Some(after) = rest.strip_prefix('=') {
            let (value, after) = word(vars, after)?;
            vars.set(name, value);
            rest = after;
        } else if !export {
            return Err(format!("not understood without a shell: {line}"));
        }
        if export {
            vars.export(name);
        }
        any = true;
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if trimmed.starts_with('#') {
            break;
        }
        if !export && !trimmed.is_empty() {
            // `A=1 command`: a command run with a variable.
            return Err(format!("not understood without a shell: {line}"));
        }
        rest = trimmed;
    }
    if any {
        Ok(())
    } else {
        Err(format!("not understood without a shell: {line}"))
    }
}

/// One shell word, expanded, up to an unquoted blank; returns the rest.
fn word<'a>(vars: &Vars, s: &'a str) -> Result<(String, &'a str), String> {
    let mut out = String::new();
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b';' => break,
            b'\'' => {
                let end = s[i + 1..].find('\'').ok_or("unterminated '")? + i + 1;
                out.push_str(&s[i + 1..end]);
                i = end + 1;
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unterminated \"".into()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            match b.get(i + 1) {
                                Some(&c @ (b'$' | b'`' | b'"' | b'\\')) => out.push(c as char),
                                Some(b'\n') => {}
                                _ => out.push('\\'),
                            }
                            i += if matches!(b.get(i + 1), Some(b'$' | b'`' | b'"' | b'\\' | b'\n'))
                            {
                                2
                            } else {
                                1
                            };
                        }
                        Some(b'$') => {
                            let (v, used) = expansion(vars, &s[i..])?;
                            out.push_str(&v);
                            i += used;
                        }
                        Some(b'`') => return Err("command substitution".into()),
                        Some(_) => {
                            let c = s[i..].chars().next().unwrap_or_default();
                            out.push(c);
                            i += c.len_utf8();
                        }
                    }
                }
            }
            b'\\' => {
                if let Some(c) = s[i + 1..].chars().next() {
                    out.push(c);
                    i += 1 + c.len_utf8();
                } else {
                    i += 1;
                }
            }
            b'$' => {
                let (v, used) = expansion(vars, &s[i..])?;
                out.push_str(&v);
                i += used;
            }
            b'`' | b'(' | b')' | b'|' | b'&' | b'<' | b'>' => {
                return Err("shell syntax".into());
            }
            _ => {
                let c = s[i..].chars().next().unwrap_or_default();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    Ok((out, &s[i..]))
}

/// `$NAME`, `${NAME}`, `${NAME:-WORD}` and friends at the start of `s`;
/// returns the value and the bytes used.
fn expansion(vars: &Vars, s: &str) -> Result<(String, usize), String> {
    let rest = &s[1..];
    if let Some(inner) = rest.strip_prefix('{') {
        let close = matching_brace(inner).ok_or("unterminated ${")?;
        let body = &inner[..close];
        let name_len = super::name_len(body);
        let (name, op) = body.split_at(name_len);
        if !crate::container::env::is_valid_name(name) {
            return Err(format!("${{{body}}}"));
        }
        let value = vars.get(name);
        let result = match op {
            "" => value.unwrap_or_default().to_string(),
            _ => {
                let (test_empty, kind, arg) = match op.as_bytes() {
                    [b':', k @ (b'-' | b'+'), ..] => (true, *k, &op[2..]),
                    [k @ (b'-' | b'+'), ..] => (false, *k, &op[1..]),
                    _ => return Err(format!("${{{body}}}")),
                };
                let set = match value {
                    Some(v) => !(test_empty && v.is_empty()),
                    None => false,
                };
                let (word_value, _) = word(vars, arg)?;
                match (kind, set) {
                    (b'-', true) => value.unwrap_or_default().to_string(),
                    (b'-', false) => word_value,
                    (b'+', true) => word_value,
                    _ => String::new(),
                }
            }
        };
        Ok((result, 2 + close + 1))
    } else {
        let len = super::name_len(rest);
        if len == 0 {
            return Ok(("$".into(), 1));
        }
        Ok((
            vars.get(&rest[..len]).unwrap_or_default().to_string(),
            1 + len,
        ))
    }
}

/// Index of the `}` closing a `${`, skipping quoted text and nested `${}`.
fn matching_brace(s: &str) -> Option<usize> {
    let (mut depth, mut single, mut double, mut escaped) = (0usize, false, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            // Braces count only outside quotes (a quoted nested `${}` is
            // skipped whole).
            '{' if !single && !double && s[..i].ends_with('$') => depth += 1,
            '}' if !single && !double => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(files: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let mut vars = Vars::new(&[("PATH".into(), "/usr/bin:/bin".into())]);
        for (name, text) in files {
            source(&mut vars, name, text)?;
        }
        Ok(vars.exported())
    }

    fn get(vars: &[(String, String)], name: &str) -> Option<String> {
        vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn what_apptainer_writes_for_docker_env_lines() {
        let docker = "#!/bin/sh\nexport PATH=\"/opt/app/bin:/usr/local/bin:/usr/bin:/bin\"\nexport LD_LIBRARY_PATH=\"${LD_LIBRARY_PATH:-\"/opt/app/lib\"}\"\nexport MYVAR=\"${MYVAR:-\"docker-value\"}\"\nexport QUOTED=\"${QUOTED:-\"a \\\\\\\"b\\\\\\\" \\\\$c\"}\"\n";
        let base = "if [ -z \"${LD_LIBRARY_PATH:-}\" ]; then\n  LD_LIBRARY_PATH=/.singularity.d/libs\nfi\nexport LD_LIBRARY_PATH\n";
        let vars = eval(&[("10-docker2singularity.sh", docker), ("99-base.sh", base)]).unwrap();
        assert_eq!(
            get(&vars, "PATH").unwrap(),
            "/opt/app/bin:/usr/local/bin:/usr/bin:/bin"
        );
        assert_eq!(get(&vars, "MYVAR").unwrap(), "docker-value");
        assert_eq!(get(&vars, "QUOTED").unwrap(), "a \\\"b\\\" \\");
        assert_eq!(
            get(&vars, "LD_LIBRARY_PATH").unwrap(),
            "/opt/app/lib:/.singularity.d/libs"
        );
        assert_eq!(get(&vars, "PS1").unwrap(), "Apptainer> ");
    }

    #[test]
    fn plain_assignments_quotes_and_defaults() {
        let text = "# comment\nA=1\nexport A B='two words' C=\"$A-${B}\" # trailing\nexport D=${UNSET-d} E=${A:+yes}\nF=$'x'\n";
        let vars = eval(&[("90-environment.sh", text)]).unwrap();
        assert_eq!(get(&vars, "A").unwrap(), "1");
        assert_eq!(get(&vars, "B").unwrap(), "two words");
        assert_eq!(get(&vars, "C").unwrap(), "1-two words");
        assert_eq!(get(&vars, "D").unwrap(), "d");
        assert_eq!(get(&vars, "E").unwrap(), "yes");
        assert_eq!(get(&vars, "F"), None, "set but never exported");
    }

    #[test]
    fn what_needs_a_shell_is_refused_with_its_line() {
        for text in [
            "if [ -n \"$X\" ]; then export A=1; fi\n",
            "export A=$(id -u)\n",
            "export A=`id -u`\n",
            "A=1 some-command\n",
            "export A=\"unterminated\n",
            "f() { :; }\n",
            "export A=${B?oops}\n",
        ] {
            let err = eval(&[("90-environment.sh", text)]).unwrap_err();
            assert!(err.starts_with("line "), "{text:?}: {err}");
        }
        // Apptainer's own conditional scripts are known, not refused.
        assert!(eval(&[("99-runtimevars.sh", "if [ -n \"$X\" ]; then PATH=$X; fi\n")]).is_ok());
    }
}
