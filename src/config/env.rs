//! The environment over the file. Only config-shaped variables are the config's
//! business: `SWITCHYARD_<SECTION>__<KEY>`, `SWITCHYARD_PROVIDERS__<NAME>__<KEY>`,
//! `SWITCHYARD_MODELS__<NAME>__<KEY>`, `SWITCHYARD_REPLY_TO__TENANTS__<TENANT>__ALLOW`,
//! plus `NATS_URL` and `DATABASE_URL`. A `SWITCHYARD_` variable without `__` (the
//! simulator's `SWITCHYARD_SIM_ADDR`, a script's `SWITCHYARD_BIN`) is left alone; a
//! config-shaped one that names no section or key is an error naming the variable.

use super::ConfigError;

/// The top-level sections of the file (a test holds this equal to `FileConfig`'s).
pub(super) const SECTIONS: [&str; 19] = [
    "nats",
    "postgres",
    "worker",
    "limits",
    "ratelimit",
    "metrics",
    "logging",
    "routing",
    "health",
    "reply_to",
    "cache",
    "batch",
    "shadow",
    "serve",
    "screen",
    "console",
    "scheduling",
    "providers",
    "models",
];

/// A variable that was applied, and where: so that an error the deserializer finds at
/// that place names the variable.
pub(super) struct Applied {
    pub var: String,
    /// The parent's path as serde_path_to_error prints it (`worker`, `providers[0]`).
    pub parent: String,
    pub key: String,
}

impl Applied {
    /// Is the deserializer's error at `path` with `message` about this variable?
    pub fn explains(&self, path: &str, message: &str) -> bool {
        let full = format!("{}.{}", self.parent, self.key);
        path == full
            || path.starts_with(&format!("{full}."))
            || path.starts_with(&format!("{full}["))
            || (path == self.parent && message.contains(&format!("`{}`", self.key)))
    }
}

/// Overlay the config-shaped variables of `vars` on the parsed file.
pub(super) fn apply(
    doc: &mut toml::Table,
    vars: &[(String, String)],
) -> Result<Vec<Applied>, ConfigError> {
    let mut applied = Vec::new();
    for (var, value) in vars {
        let path: Vec<String> = match var.as_str() {
            "NATS_URL" => vec!["nats".into(), "url".into()],
            "DATABASE_URL" => vec!["postgres".into(), "url".into()],
            v => match v.strip_prefix("SWITCHYARD_") {
                Some(rest) if rest.contains("__") => {
                    rest.split("__").map(str::to_ascii_lowercase).collect()
                }
                _ => continue,
            },
        };
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        if !SECTIONS.contains(&path[0].as_str()) {
            return Err(env_err(format!(
                "the config has no section [{}] (sections: {})",
                path[0],
                SECTIONS.join(", ")
            )));
        }
        if path.iter().any(String::is_empty) {
            return Err(env_err(
                "empty name between '__' separators; expected SWITCHYARD_<SECTION>__<KEY>".into(),
            ));
        }
        let scalar = env_scalar(value);
        let (parent, key) = match path.as_slice() {
            [section, key] if section != "providers" && section != "models" => {
                let table = doc
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let table = table
                    .as_table_mut()
                    .ok_or_else(|| env_err(format!("[{section}] is not a table")))?;
                table.insert(key.clone(), scalar);
                (section.clone(), key.clone())
            }
            [list, name, key] if list == "providers" || list == "models" => {
                let items = doc
                    .get_mut(list.as_str())
                    .and_then(|v| v.as_array_mut())
                    .ok_or_else(|| env_err(format!("no [[{list}]] in the config")))?;
                let (i, item) = items
                    .iter_mut()
                    .filter_map(|v| v.as_table_mut())
                    .enumerate()
                    .find(|(_, t)| {
                        t.get("name")
                            .and_then(|n| n.as_str())
                            .is_some_and(|n| n.eq_ignore_ascii_case(name))
                    })
                    .ok_or_else(|| env_err(format!("no {list} entry named {name:?}")))?;
                item.insert(key.clone(), scalar);
                (format!("{list}[{i}]"), key.clone())
            }
            [section, list, tenant, key] if section == "reply_to" && list == "tenants" => {
                let entries = doc
                    .entry("reply_to")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| env_err("[reply_to] is not a table".into()))?
                    .entry("tenants")
                    .or_insert_with(|| toml::Value::Array(Vec::new()))
                    .as_array_mut()
                    .ok_or_else(|| env_err("reply_to.tenants is not an array".into()))?;
                let at = entries.iter().position(|t| {
                    t.get("tenant").and_then(|n| n.as_str()) == Some(tenant.as_str())
                });
                let i = match at {
                    Some(i) => i,
                    None => {
                        let mut t = toml::Table::new();
                        t.insert("tenant".into(), toml::Value::String(tenant.clone()));
                        entries.push(toml::Value::Table(t));
                        entries.len() - 1
                    }
                };
                if let Some(t) = entries[i].as_table_mut() {
                    t.insert(key.clone(), scalar);
                }
                (format!("reply_to.tenants[{i}]"), key.clone())
            }
            _ => {
                return Err(env_err(
                    "expected SWITCHYARD_<SECTION>__<KEY>, SWITCHYARD_PROVIDERS__<NAME>__<KEY>, SWITCHYARD_MODELS__<NAME>__<KEY> or SWITCHYARD_REPLY_TO__TENANTS__<TENANT>__ALLOW"
                        .into(),
                ))
            }
        };
        applied.push(Applied {
            var: var.clone(),
            parent,
            key,
        });
    }
    Ok(applied)
}

/// An environment value as TOML: an integer, boolean or array when it parses as one,
/// else a string (prices are decimal strings, so no floats).
fn env_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if v.starts_with('[') {
        if let Ok(t) = format!("x = {v}").parse::<toml::Table>() {
            if let Some(x) = t.get("x") {
                return x.clone();
            }
        }
    }
    toml::Value::String(v.to_string())
}
