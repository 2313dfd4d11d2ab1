"""One module per `exportctl` command; see `exportctl.cli`."""
