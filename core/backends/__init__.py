"""Finding and loading backends and plugins (the plugin manager), above the contract and the data sources."""
