//! Settings loading: built-in defaults, then an optional TOML file, then environment variables
//! (`RUNNEL_<SERVICE>__SECTION__KEY`), then `KAFKA_BROKERS`, which points every service at one broker.
//!
//! The environment is passed in rather than read here, so that only `main.rs` reads the process
//! environment and tests can load settings from a plain map.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The variable that, when set, overrides `kafka.brokers` of every service.
pub const KAFKA_BROKERS_VAR: &str = "KAFKA_BROKERS";

/// A setting that could not be loaded or is invalid: the key, in dotted form, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self { key: key.into(), message: message.to_string() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a service's settings, reported at once.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub service: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} configuration:", self.service)?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// What every service's settings offer: a check of every value after loading, and the telemetry and
/// operations parts.
pub trait ServiceSettings: DeserializeOwned + Serialize + Default {
    /// Every invalid value, each naming its key.
    fn validate(&self) -> Vec<FieldError>;
    fn telemetry(&self) -> &crate::telemetry::TelemetrySettings;
    fn ops(&self) -> &crate::ops::OpsSettings;
}

/// Loads the settings of `service` (e.g. `"collector"`): the struct's `Default`, then `file` if given,
/// then the variables of `env` that start with `RUNNEL_<SERVICE>__`, then `KAFKA_BROKERS`.
///
/// Unknown keys, malformed values and invalid values are all errors naming the key.
pub fn load<T>(
    service: &str,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: ServiceSettings,
{
    let fail = |errors| ConfigError { service: service.to_owned(), errors };
    let prefix = format!("RUNNEL_{}", service.to_uppercase());
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut brokers = None;
    for (name, value) in env {
        if name == KAFKA_BROKERS_VAR {
            brokers = Some(value);
        } else if name.starts_with(&format!("{prefix}__")) {
            vars.insert(name, value);
        }
    }

    // The defaults are a layer of their own (rather than `#[serde(default)]`), so that a file or a variable
    // may set one key of a nested table and keep the defaults of its siblings.
    let defaults = config::Config::try_from(&T::default())
        .map_err(|err| fail(vec![FieldError::new("defaults", err)]))?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(&prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars.into_iter().collect())),
    );
    if let Some(brokers) = brokers {
        builder = builder
            .set_override("kafka.brokers", brokers)
            .map_err(|err| fail(vec![FieldError::new("kafka.brokers", err)]))?;
    }
    let layered = builder.build().map_err(|err| {
        let key = file.map_or_else(|| "environment".to_owned(), |f| f.display().to_string());
        fail(vec![FieldError::new(key, err)])
    })?;

    // serde_path_to_error names the key of the first malformed or unknown value, which the config crate's
    // own error often leaves out.
    let settings: T = serde_path_to_error::deserialize(layered).map_err(|err| {
        let key = err.path().to_string();
        fail(vec![FieldError::new(if key == "." { "settings".to_owned() } else { key }, err.into_inner())])
    })?;
    let errors = settings.validate();
    if errors.is_empty() { Ok(settings) } else { Err(fail(errors)) }
}

/// Pushes an error for `key` when `ok` is false; keeps `validate` implementations short.
pub fn check(errors: &mut Vec<FieldError>, ok: bool, key: &str, message: impl fmt::Display) {
    if !ok {
        errors.push(FieldError::new(key, message));
    }
}

/// The kernel's host name: distinct per container, stable across restarts of one (the default
/// transactional id of an exactly-once service instance is made of it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_owned()).unwrap_or_default()
}
