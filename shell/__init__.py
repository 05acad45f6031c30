"""User interfaces: the `llmos` command line (cli/) and, with the shell issue, the Textual TUI."""
