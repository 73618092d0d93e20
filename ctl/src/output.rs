//! How a command's answer reaches stdout: human tables (rendered by [`crate::table`]) or JSON.

use serde_json::Value;

/// Output mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

/// Print a JSON value, pretty.
pub fn print_json(v: &Value) {
    // Serialising a `Value` cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
