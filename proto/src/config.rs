//! `--config FILE` for the daemons: a flat TOML file whose keys are the long flag
//! names (`data-dir` or `data_dir`). Precedence: flags, then `GROVE_*` environment
//! variables, then the file.
//!
//! The file is turned into extra command-line flags appended before clap parses, for
//! every key that neither the command line nor the environment sets; unknown keys are
//! an error that names them.

use std::path::Path;

/// One flag the program knows: its id (`data_dir`) and whether it takes a value.
#[derive(Debug, Clone)]
pub struct Flag {
    /// clap's id, the long name with `_`.
    pub id: String,
    /// Takes a value (else it is a switch).
    pub takes_value: bool,
}

fn flag_given(argv: &[String], long: &str) -> bool {
    argv.iter()
        .any(|a| a == long || a.starts_with(&format!("{long}=")))
}

/// The `--config` path from argv or `GROVE_CONFIG`.
fn config_path(argv: &[String]) -> Option<String> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.to_owned());
        }
    }
    std::env::var("GROVE_CONFIG").ok()
}

/// `argv` with the config file's settings appended as flags.
pub fn args_with_config(mut argv: Vec<String>, flags: &[Flag]) -> Result<Vec<String>, String> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text =
        std::fs::read_to_string(Path::new(&path)).map_err(|e| format!("config {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("config {path}: {e}"))?;
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(flag) = flags.iter().find(|f| f.id == id && f.id != "config") else {
            let known: Vec<String> = flags
                .iter()
                .filter(|f| f.id != "config")
                .map(|f| f.id.replace('_', "-"))
                .collect();
            return Err(format!(
                "config {path}: unknown key `{key}` (known: {})",
                known.join(", ")
            ));
        };
        let long = format!("--{}", id.replace('_', "-"));
        let env = format!("GROVE_{}", id.to_uppercase());
        if flag_given(&argv, &long) || std::env::var_os(&env).is_some() {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "config {path}: `{key}` must be a string, number, boolean or a list of them, not {}",
                other.type_str()
            )),
        };
        // A list gives the flag once per item (flags that may repeat).
        let items = match &value {
            toml::Value::Array(a) => a.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        if flag.takes_value {
            for text in items {
                argv.push(long.clone());
                argv.push(text);
            }
        } else if value.as_bool() == Some(true) {
            argv.push(long);
        }
    }
    Ok(argv)
}

/// Parse a daemon's command line with its `--config` file applied; on a bad file it
/// says why and exits with status 2 (clap does the same for bad flags).
pub fn parse<A: clap::Parser>(bin: &str) -> A {
    let flags: Vec<Flag> = A::command()
        .get_arguments()
        .map(|a| Flag {
            id: a.get_id().to_string(),
            takes_value: a.get_action().takes_values(),
        })
        .collect();
    match args_with_config(std::env::args().collect(), &flags) {
        Ok(argv) => A::parse_from(argv),
        Err(e) => {
            eprintln!("{bin}: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<Flag> {
        ["config", "data_dir", "http", "json_logs"]
            .iter()
            .map(|id| Flag {
                id: (*id).into(),
                takes_value: *id != "json_logs",
            })
            .collect()
    }

    fn file(name: &str, text: &str) -> String {
        let p =
            std::env::temp_dir().join(format!("grove-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    #[test]
    fn file_settings_become_flags_unless_given() {
        let f = file(
            "ok",
            "data-dir = \"/srv/grove\"\nhttp = \"127.0.0.1:1\"\njson_logs = true\n",
        );
        let argv: Vec<String> = ["grove-root", "--config", &f, "--http", "0.0.0.0:2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = args_with_config(argv, &flags()).unwrap();
        assert!(
            out.windows(2)
                .any(|w| w[0] == "--data-dir" && w[1] == "/srv/grove")
        );
        assert_eq!(
            out.iter().filter(|a| *a == "--http").count(),
            1,
            "the command line wins: {out:?}"
        );
        assert!(out.contains(&"--json-logs".to_owned()));
    }

    #[test]
    fn unknown_keys_and_bad_files_are_named() {
        let f = file("bad", "data-dri = \"/x\"\n");
        let err = args_with_config(vec!["x".into(), "--config".into(), f], &flags()).unwrap_err();
        assert!(
            err.contains("unknown key `data-dri`") && err.contains("data-dir"),
            "{err}"
        );
        let err = args_with_config(
            vec!["x".into(), "--config=/nonexistent/grove.toml".into()],
            &flags(),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/grove.toml"), "{err}");
        let f = file("syntax", "data-dir = \n");
        assert!(args_with_config(vec!["x".into(), "--config".into(), f], &flags()).is_err());
    }
}
