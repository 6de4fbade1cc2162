"""The command line: the entry point (`main`), its commands, options and errors, `doctor` and
`fetch-models`. Nothing outside this package imports it, or argparse."""
