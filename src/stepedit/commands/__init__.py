"""Sub-commands of the `stepedit` CLI, one module each (see `stepedit.cli`)."""
