"""The `nextframe` command: one entry point for every job (`nextframe --help`); see `nextframe.commands`."""
