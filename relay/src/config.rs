//! The one configuration file (`sluice.toml`) shared by every Sluice process.
